"""``pgjobs status``: queues, workers, beat and the next runs, in one screen or one JSON."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
import sqlalchemy as sa

from beat import store as beat_store
from broker.admin import Admin
from config.ops import snapshot as snap
from config.ops.common import (
    Bounded,
    OneLineCommand,
    broker_database_url,
    database_errors,
    database_url,
    echo_json,
    settings,
)
from config.urls import sqlalchemy_url

MAX_WATCH_SECONDS = 86400
"""The longest --watch interval: a day."""
QUEUE_COLUMNS = ("QUEUE", "READY", "SCHEDULED", "IN FLIGHT", "DEAD", "OLDEST READY")


@click.command(cls=OneLineCommand)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (shape in the README).")
@click.option("--watch", type=Bounded(0.5, MAX_WATCH_SECONDS), metavar="SECONDS",
              help="Repeat every SECONDS until interrupted.")
def status(as_json: bool, watch: float | None) -> None:
    """Queue depths, live workers, the beat leader and the next schedule runs."""
    url = database_url()
    broker_url = broker_database_url()
    visibility_timeout = settings().visibility_timeout
    try:
        with _sources(url, broker_url) as (admin, engine):
            while True:
                with database_errors(url):
                    current = snap.take(admin, engine, visibility_timeout)
                _show(current, as_json, clear=bool(watch) and not as_json)
                if not watch:
                    return
                time.sleep(watch)
    except KeyboardInterrupt:  # the way to leave --watch
        pass


def _show(current: snap.Snapshot, as_json: bool, clear: bool) -> None:
    if clear:
        click.clear()
    if as_json:
        echo_json(current.as_dict())
    else:
        click.echo(render(current))


@contextmanager
def _sources(url: str, broker_url: str) -> Iterator[tuple[Admin, sa.Engine]]:
    engine = beat_store.create_engine(sqlalchemy_url(url))
    try:
        with Admin(broker_url) as admin:
            yield admin, engine
    finally:
        engine.dispose()


def render(current: snap.Snapshot) -> str:
    """The text form: a queue table, then workers, beat and the next runs."""
    return "\n".join([_queues(current), "", *_workers(current), "", *_beat(current),
                      "", *_schedule(current)])


def _queues(current: snap.Snapshot) -> str:
    if not current.queues:
        return "no queues yet"
    rows = [QUEUE_COLUMNS, *((q.name, str(q.ready), str(q.scheduled), str(q.in_flight),
                              str(q.dead), _age(q.oldest_ready_age_s))
                             for q in current.queues)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(QUEUE_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip()
                     for row in rows)


def _workers(current: snap.Snapshot) -> list[str]:
    if not current.workers:
        return ["workers: none live"]
    return [f"workers: {len(current.workers)} live"] + [
        f"  {w.name} (pid {w.pid}), heartbeat {w.heartbeat_age_s:.1f}s ago"
        for w in current.workers]


def _beat(current: snap.Snapshot) -> list[str]:
    beat = current.beat
    if beat is None:
        return ["beat: no leader"]
    line = f"beat: {beat.leader} leads, last pass {_ago(beat.last_pass_age_s)}"
    if beat.last_dispatch:
        at = beat.last_dispatch["at"].isoformat(timespec="seconds")
        line += f", last dispatch {beat.last_dispatch['entry']} at {at}"
    return [line]


def _schedule(current: snap.Snapshot) -> list[str]:
    if not current.schedule:
        return ["next runs: none"]
    return ["next runs:"] + [f"  {run.at.isoformat(timespec='seconds')}  {run.name}  {run.task}"
                             for run in current.schedule]


def _ago(seconds: float | None) -> str:
    return "unknown (activity hidden from this role)" if seconds is None else f"{seconds:.1f}s ago"


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"
