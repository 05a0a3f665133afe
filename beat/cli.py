"""``pgjobs schedule``: inspect and edit the database schedule.

Every write is one transaction that also bumps the schedule's change marker, so running
beats pick it up within ``beat_max_loop_interval``. Bad input prints one line and writes
nothing.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click
from celery import Task
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy_celery_beat.models import PeriodicTask

from beat import store
from beat.listing import table
from beat.slots import CATCH_UP_CHOICES
from beat.specs import (
    ClockedSpec,
    CronSpec,
    EntrySpec,
    IntervalSpec,
    Schedule,
    SpecError,
    check_timezone,
    parse_json,
)
from config.errors import database_error
from config.ops.common import OneLineGroup
from config.settings import SettingsError, get_settings
from config.urls import sqlalchemy_url

# Beyond these, schedules stop meaning anything (and the database columns overflow).
MAX_EVERY_SECONDS = 10 * 365 * 24 * 3600
LATEST_AT_YEAR = 9998


@click.group(cls=OneLineGroup)
def schedule() -> None:
    """Inspect and edit the recurring schedule stored in PostgreSQL."""


@contextmanager
def _session() -> Iterator[Session]:
    """A transaction on DATABASE_URL; expected failures become one-line errors."""
    try:
        url = get_settings().require_database_url()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    engine = store.create_engine(sqlalchemy_url(url))
    try:
        with store.transaction(engine) as session:
            yield session
    except (SpecError, LookupError) as error:
        raise click.ClickException(_message(error)) from None
    except SQLAlchemyError as error:
        raise click.ClickException(f"database error: {database_error(error)}") from None
    finally:
        engine.dispose()


def _message(error: Exception) -> str:
    return error.args[0] if error.args else str(error)


def _schedule_spec(cron: str | None, every: int | None, at: str | None,
                   given_timezone: str | None) -> Schedule:
    if sum(option is not None for option in (cron, every, at)) != 1:
        raise SpecError("give exactly one of --cron, --every or --at")
    timezone = given_timezone or get_settings().timezone
    check_timezone(timezone)  # a mistyped zone is an error even where it is not used
    if every is not None and given_timezone is not None:
        raise SpecError("--timezone applies to --cron and --at only: an --every interval is "
                        "the same in every zone; leave --timezone out")
    if cron is not None:
        return CronSpec.parse(cron, timezone)
    if every is not None:
        return IntervalSpec(_check_every(every))
    return _clocked(at, timezone)


def _check_every(seconds: int) -> int:
    if not 1 <= seconds <= MAX_EVERY_SECONDS:
        raise SpecError(f"--every {seconds} must be a whole number of seconds from 1 to "
                        f"{MAX_EVERY_SECONDS} (10 years)")
    return seconds


def _clocked(at: str, timezone: str) -> ClockedSpec:
    too_far = SpecError(f"--at {at!r} is too far ahead; give a time before "
                        f"{LATEST_AT_YEAR + 1}-01-01")
    try:
        spec = ClockedSpec.parse(at, timezone, datetime.now(UTC))
    except OverflowError:  # a time near year 9999 that UTC cannot hold
        raise too_far from None
    if spec.at.year > LATEST_AT_YEAR:
        raise too_far
    return spec


def _check_task(task: str, force: bool, args: list, kwargs: dict) -> None:
    """Refuse a task name the app does not know, or arguments its task does not take:
    mistakes that would fail at every run."""
    from config.celery import app

    for module in (*app.conf.imports, *app.conf.include):
        app.loader.import_task_module(module)
    if force:
        return
    if task not in app.tasks:
        raise SpecError(f"--task {task!r} is not a task this app knows; check the name, "
                        "or give --force to schedule a task defined elsewhere")
    _check_arguments(app.tasks[task], args, kwargs)


def _check_arguments(task: Task, args: list, kwargs: dict) -> None:
    """Celery's own check, as ``apply_async`` makes it: the task's ``__header__`` has its
    signature (only with ``typing``, Celery's switch for the check)."""
    check = getattr(task, "__header__", None) if task.typing else None
    if check is None:
        return
    try:
        check(*args, **kwargs)
    except TypeError as error:
        raise SpecError(
            f"--args/--kwargs do not fit task {task.name}{_parameters(task)}: "
            f"{_reason(task, args, kwargs, error)}; fix them, or give --force to schedule "
            "them as they are") from None


def _reason(task: Task, args: list, kwargs: dict, error: TypeError) -> str:
    """Why, in the terms of the parameters shown: Celery's message counts a bound task's
    ``self`` among the positional arguments."""
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as reason:
        return str(reason)
    return str(error)


def _parameters(task: Task) -> inspect.Signature:
    """The task's parameters, without annotations: ``(email, name, code)``."""
    signature = inspect.signature(task.run)
    return signature.replace(return_annotation=signature.empty, parameters=[
        parameter.replace(annotation=parameter.empty)
        for parameter in signature.parameters.values()])


@schedule.command()
@click.argument("name")
@click.option("--task", required=True, help="Celery task name, e.g. tasks.delete_old_data.")
@click.option("--cron", help='"MIN HOUR DOM MON DOW", e.g. "0 4 * * *".')
@click.option("--every", type=int, help="Interval in seconds.")
@click.option("--at", "at", help="Run once at this ISO-8601 time.")
@click.option("--args", "args_json", default="[]", help="JSON list of positional arguments.")
@click.option("--kwargs", "kwargs_json", default="{}", help="JSON object of keyword arguments.")
@click.option("--queue", default=None, help="Queue to send to (default: the task's).")
@click.option("--timezone", default=None, help="IANA zone for --cron/--at (default TIMEZONE).")
@click.option("--catch-up", "catch_up", type=click.Choice(CATCH_UP_CHOICES), default="once",
              show_default=True, help="After downtime: run once, or skip missed runs.")
@click.option("--force", is_flag=True, help="Accept a --task this app does not define, or "
              "--args/--kwargs its signature does not take.")
def add(name: str, task: str, cron: str | None, every: int | None, at: str | None,
        args_json: str, kwargs_json: str, queue: str | None, timezone: str | None,
        catch_up: str, force: bool) -> None:
    """Add entry NAME."""
    with _session() as session:
        spec = EntrySpec(
            name=name, task=task, queue=queue, catch_up=catch_up,
            schedule=_schedule_spec(cron, every, at, timezone),
            args=parse_json("--args", args_json, list),
            kwargs=parse_json("--kwargs", kwargs_json, dict))
        _check_task(task, force, spec.args, spec.kwargs)
        store.add_entries(session, [spec], only_missing=False)
    click.echo(f"added {name}")


@schedule.command(name="list")
def list_() -> None:
    """Show every entry: name, task, schedule, enabled, last run, next run."""
    with _session() as session:
        rows = store.all_entries(session)
        click.echo(table(rows, datetime.now(UTC)))


@schedule.command()
@click.argument("names", nargs=-1, required=True)
def pause(names: tuple[str, ...]) -> None:
    """Stop running NAMES until resumed."""
    with _session() as session:
        store.set_enabled(session, list(names), enabled=False)
    click.echo(f"paused {', '.join(names)}")


@schedule.command()
@click.argument("names", nargs=-1, required=True)
def resume(names: tuple[str, ...]) -> None:
    """Run NAMES again, from now on (runs missed while paused are not caught up)."""
    with _session() as session:
        store.set_enabled(session, list(names), enabled=True)
    click.echo(f"resumed {', '.join(names)}")


@schedule.command()
@click.argument("names", nargs=-1, required=True)
def remove(names: tuple[str, ...]) -> None:
    """Delete NAMES from the schedule."""
    with _session() as session:
        store.remove(session, list(names))
    click.echo(f"removed {', '.join(names)}")


@schedule.command()
@click.argument("name")
def run(name: str) -> None:
    """Send NAME's task once now, through the app's broker; the schedule is unchanged."""
    with _session() as session:
        entry = store.get(session, name)
        message = _run_options(entry)
    task_id = _send(entry.task, message)
    click.echo(f"sent {name} ({entry.task}) as {task_id}")


def _run_options(entry: PeriodicTask) -> dict:
    options = {"args": json.loads(entry.args or "[]"), "kwargs": json.loads(entry.kwargs or "{}"),
               "headers": {**json.loads(entry.headers or "{}"), "periodic_task_name": entry.name}}
    if entry.queue:
        options["queue"] = entry.queue
    return options


def _send(task: str, options: dict) -> str:
    from config.celery import app

    try:
        return app.send_task(task, **options).id
    except Exception as error:  # the broker's own errors vary by transport
        raise click.ClickException(f"could not send {task}: {error}") from None
