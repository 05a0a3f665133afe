"""The ``pgjobs`` command line: ``dev``, ``migrate`` and ``schedule``."""

from __future__ import annotations

import logging

import click
from sqlalchemy.exc import SQLAlchemyError

from beat.cli import schedule
from broker.urls import redact
from config.errors import database_error, one_line
from config.ops.common import OneLineCommand, OneLineGroup
from config.settings import Settings, SettingsError, get_settings


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _direct_url() -> tuple[str, str]:
    """DATABASE_DIRECT_URL (or DATABASE_URL), and the name of the one it is: migrations
    hold a session's advisory lock."""
    try:
        current = _settings()
        return current.require_direct_url(), current.direct_url_name
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _prepare(database_url: str, setting: str = "DATABASE_URL") -> tuple[str | None, str | None]:
    """Bring the schema up to date and install the default schedule entries; the revisions
    before and after. Failures are one line naming ``setting``, the URL's own name."""
    from beat.schedule import sync_default_entries
    from config.checks import check_database
    from config.migrate import upgrade

    try:
        check_database(database_url, setting)
        revisions = upgrade(database_url)
        sync_default_entries(database_url)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    except SQLAlchemyError as error:
        raise click.ClickException(f"database error: {database_error(error, setting)}") from None
    return revisions


@click.group(cls=OneLineGroup)
def main() -> None:
    """pgjobs: background jobs on Celery with PostgreSQL as the only service."""


@main.command(cls=OneLineCommand)
def migrate() -> None:
    """Create or upgrade every pgjobs table. Safe to run twice, or from two hosts at once."""
    url, setting = _direct_url()
    before, after = _prepare(url, setting)
    click.echo(_migrated(before, after))
    _hint_grants(url)


def _migrated(before: str | None, after: str | None) -> str:
    """What ``pgjobs migrate`` did, in one line."""
    if before == after:
        return "pgjobs: database is up to date"
    if before is None:
        return f"pgjobs: created the pgjobs tables (revision {after})"
    return f"pgjobs: migrated the database from revision {before} to {after}"


def _hint_grants(url: str) -> None:
    """Name the roles granted before that this release's tables need granting to again."""
    import psycopg

    from config.grants import roles_behind

    try:
        behind = roles_behind(url)
    except psycopg.Error as error:  # advice only: the migration itself succeeded
        click.echo(f"pgjobs: could not check the runtime roles' grants ({one_line(error)})",
                   err=True)
        return
    for role in behind:
        click.echo(f"pgjobs: role {role} lacks privileges on this release's tables: "
                   f"run `pgjobs grant {role}`")


@main.command(cls=OneLineCommand)
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Worker processes.")
@click.option("--no-beat", is_flag=True, help="Run the worker only.")
def dev(concurrency: int, no_beat: bool) -> None:
    """Run a worker and beat locally; with no DATABASE_URL, on an embedded PostgreSQL."""
    from config.dev import celery_commands, database_for, run_processes, sigterm_as_interrupt

    settings = _settings()
    logging.basicConfig(level=settings.log_level, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with sigterm_as_interrupt(), database_for(settings) as database_url:
        if not settings.database_url:
            click.echo(f"pgjobs: embedded PostgreSQL in {settings.data_dir}, "
                       f"DATABASE_URL={redact(database_url)}")
        _prepare(database_url)
        commands = celery_commands(concurrency, settings.log_level, beat=not no_beat)
        code = run_processes(commands, database_url)
    raise SystemExit(code)


main.add_command(schedule)

from config.grants import grant_command as _grant  # noqa: E402

main.add_command(_grant)

# Operator commands (config/ops/).
from config.ops.commands import register as _register_ops  # noqa: E402

_register_ops(main)
