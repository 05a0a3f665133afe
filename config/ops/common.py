"""What every operator command shares: the database URL, one-line errors, JSON, progress."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import click
import psycopg
from sqlalchemy.exc import SQLAlchemyError

from broker.admin import Admin
from config.checks import unreachable
from config.errors import one_line
from config.settings import Settings, SettingsError, get_settings

T = TypeVar("T")

LIST_LIMIT = 100_000
"""The most rows a ``list`` command prints (``--limit``)."""
ROW_ID = click.IntRange(1, 2**63 - 1)
"""A row id: a positive PostgreSQL ``bigint``."""


class Bounded(click.FloatRange):
    """A number from ``low`` to ``high``: click's FloatRange, which lets NaN through (it
    compares false with every bound), refusing it too. Both bounds are required, so
    infinity is refused as well; click's help shows the range."""

    def __init__(self, low: float, high: float, *, low_open: bool = False) -> None:
        super().__init__(min=low, max=high, min_open=low_open)

    def convert(self, value, param, ctx):  # type: ignore[override]
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value} is not in the range {self._describe_range()}.", param, ctx)
        return number


class OneLineCommand(click.Command):
    """Usage mistakes print one line (``Error: ...``) instead of the usage banner."""

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[override]
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as error:
            raise click.ClickException(error.format_message()) from None


class OneLineGroup(click.Group):
    """A group of :class:`OneLineCommand`; an unknown subcommand is one line too."""

    command_class = OneLineCommand

    def resolve_command(self, ctx, args):  # type: ignore[override]
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            raise click.ClickException(error.format_message()) from None


def settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def database_url() -> str:
    try:
        return settings().require_database_url()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def broker_database_url() -> str:
    """The database the broker's tables live in (BROKER_URL, by default DATABASE_URL); a
    one-line error when the broker is RabbitMQ, whose queues these commands cannot see."""
    current = settings()
    if not current.broker_is_postgres:
        raise click.ClickException(
            "BROKER_URL points at RabbitMQ, so the queues are RabbitMQ's: see them with "
            "`rabbitmqctl list_queues` or its management UI, and the workers with "
            "`celery -A config inspect`")
    try:
        return current.require_broker_url()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@contextmanager
def database_errors(url: str, name: str = "DATABASE_URL") -> Iterator[None]:
    """Turn a database failure into one line naming the fix (and ``name``, the setting that
    holds ``url``, when it cannot be reached), exit status 1."""
    try:
        yield
    except psycopg.OperationalError as error:
        raise click.ClickException(unreachable(url, error, name)) from None
    except psycopg.errors.UndefinedTable as error:
        raise click.ClickException(f"{one_line(error)}: run `pgjobs migrate` first") from None
    except (psycopg.Error, SQLAlchemyError) as error:
        if isinstance(getattr(error, "orig", None), psycopg.OperationalError):
            raise click.ClickException(unreachable(url, error, name)) from None
        raise click.ClickException(f"database error: {one_line(error)}") from None


@contextmanager
def admin() -> Iterator[Admin]:
    """The broker's operator API on its database, with one-line errors."""
    url = broker_database_url()
    with database_errors(url), Admin(url) as api:
        yield api


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, default=_jsonable, sort_keys=False))


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def batched_progress(batches: Iterable[T], total: int, label: str) -> Iterator[T]:
    """Yield ``batches`` (sized sequences), advancing a terminal progress bar by each."""
    if not sys.stderr.isatty():
        yield from batches
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))  # type: ignore[arg-type]
