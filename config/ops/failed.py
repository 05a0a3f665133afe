"""``pgjobs failed list|retry``: failed tasks, read from the result backend's
``celery_taskmeta`` table.

A retry sends the original task, with its stored arguments, to its queue as a new task (a
new id), and deletes the failed result in the same transaction as the send (pgjobs'
transactional enqueue): a retry is sent once, however often the command is run. Arguments
are stored only with ``result_extended`` (pgjobs turns it on); a failed task without them
cannot be retried.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg

from broker import in_transaction
from broker.admin import chunks
from config.ops.common import (
    LIST_LIMIT,
    OneLineGroup,
    batched_progress,
    database_errors,
    database_url,
    echo_json,
    iso,
)
from config.ops.queries import QUERIES

BATCH = 100
"""Retries sent per transaction."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class Failed:
    task_id: str
    task: str
    date_done: datetime | None
    error: str
    queue: str | None
    retries: int | None
    worker: str | None


@dataclass(frozen=True)
class Retry:
    task_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None


@click.group(cls=OneLineGroup)
def failed() -> None:
    """List or retry failed tasks (from the result backend)."""


@failed.command(name="list")
@click.option("--task", help="Only this task name, e.g. tasks.send_sign_in_email.")
@click.option("--since", help="Only those that failed since: 30m, 6h, 2d, or an ISO-8601 time.")
@click.option("--limit", type=click.IntRange(1, LIST_LIMIT), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of "
              "{task_id, task, date_done, error, queue, retries, worker}.")
def list_(task: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Failed tasks, newest first: id, task, when, error."""
    params = {"task": task, "since": parse_since(since), "limit": limit}
    url = database_url()
    with database_errors(url), psycopg.connect(url, connect_timeout=5) as conn:
        rows = [_failed(row) for row in conn.execute(QUERIES["failed_list"], params)]
    if as_json:
        echo_json([{**vars(row), "date_done": iso(row.date_done)} for row in rows])
    elif not rows:
        click.echo("no failed tasks")
    else:
        click.echo("\n".join(_line(row) for row in rows))


def parse_since(text: str | None) -> datetime | None:
    """``--since`` as a naive UTC time (``celery_taskmeta.date_done`` holds UTC)."""
    if text is None:
        return None
    try:
        aware = _moment(text)
        return aware.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # a duration, or a time zone's offset, beyond year 1 or 9999
        raise click.ClickException(
            f"--since {text!r} falls outside the years 1 to 9999 (UTC); give a shorter "
            "duration (30m, 6h, 2d) or an ISO-8601 time within them") from None


def _moment(text: str) -> datetime:
    match = _DURATION.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.ClickException(
            f"--since {text!r} is neither a duration (30m, 6h, 2d) nor an ISO-8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _failed(row: tuple[Any, ...]) -> Failed:
    task_id, name, date_done, traceback, queue, retries, worker = row
    done = date_done.replace(tzinfo=UTC) if date_done is not None else None  # stored as UTC
    return Failed(task_id=task_id, task=name or "", date_done=done,
                  error=_last_line(traceback), queue=queue, retries=retries, worker=worker)


def _last_line(traceback: str | None) -> str:
    lines = [line for line in (traceback or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _line(row: Failed) -> str:
    when = row.date_done.isoformat(timespec="seconds") if row.date_done else "-"
    return f"{row.task_id}  {row.task or '?'}  {when}  {row.error}"


@failed.command()
@click.argument("task_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every failed task (of --task).")
@click.option("--task", help="Only this task name.")
def retry(task_ids: tuple[str, ...], all_: bool, task: str | None) -> None:
    """Send failed tasks TASK_IDS (or --all) again, as new tasks with the same arguments."""
    if bool(task_ids) == all_:
        raise click.ClickException("give failed task ids, or --all (see `pgjobs failed list`)")
    url = database_url()
    with database_errors(url), psycopg.connect(url, connect_timeout=5) as conn:
        found = conn.execute(QUERIES["failed_for_retry"],
                             {"ids": list(task_ids) or None, "task": task}).fetchall()
        retries, unusable = _retries(found)
        _check(task_ids, found, unusable)
        sent = _send(conn, retries)
    skipped = f"; {len(unusable)} without stored arguments skipped" if unusable else ""
    click.echo(f"retried {sent} failed task{'s' if sent != 1 else ''}{skipped}")


def _retries(rows: list[tuple[Any, ...]]) -> tuple[list[Retry], list[str]]:
    """The rows that can be sent again, and the ids of those whose arguments are missing."""
    retries, unusable = [], []
    for task_id, name, args, kwargs, queue in rows:
        decoded = _arguments(args, kwargs)
        if decoded is None or not name:
            unusable.append(task_id)
        else:
            retries.append(Retry(task_id, name, decoded[0], decoded[1], queue))
    return retries, unusable


def _arguments(args: bytes | None, kwargs: bytes | None) -> tuple[list, dict] | None:
    """Stored JSON arguments; None when absent or not a list and an object."""
    try:
        positional = json.loads(bytes(args)) if args is not None else None
        named = json.loads(bytes(kwargs)) if kwargs is not None else {}
    except ValueError:
        return None
    if not isinstance(positional, list) or not isinstance(named, dict):
        return None
    return positional, named


def _check(task_ids: tuple[str, ...], found: list[tuple[Any, ...]], unusable: list[str]) -> None:
    missing = sorted(set(task_ids) - {row[0] for row in found})
    if missing:
        raise click.ClickException(f"no failed task {', '.join(missing)}; nothing was sent "
                                   "(see `pgjobs failed list`)")
    named = sorted(set(task_ids) & set(unusable))
    if named:
        raise click.ClickException(
            f"failed task {', '.join(named)} has no stored arguments (a worker that did not "
            "know the task, or result_extended off, stores none); nothing was sent")


def _send(conn: psycopg.Connection, retries: list[Retry]) -> int:
    from config.celery import app

    for batch in batched_progress(chunks(retries, BATCH), len(retries), "retrying"):
        with conn.transaction(), in_transaction(conn):
            for item in batch:
                app.send_task(item.task, args=item.args, kwargs=item.kwargs, queue=item.queue)
                conn.execute(QUERIES["failed_forget"], {"task_id": item.task_id})
    return len(retries)
