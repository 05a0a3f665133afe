"""``pgjobs metrics``: Prometheus metrics read from the database at each scrape.

Every scrape runs the same cheap statements as ``pgjobs status`` (each count reads the
partial index of its state) on one connection kept open between scrapes.

Metrics (all gauges):

- ``pgjobs_database_up``: 1 when the last scrape could read the database, else 0 (and
  nothing else is exported for that scrape).
- ``pgjobs_queue_messages{queue, state}``: messages per queue and state
  (``ready``, ``scheduled``, ``in_flight``, ``dead``).
- ``pgjobs_queue_oldest_ready_age_seconds{queue}``: how long the longest-waiting ready
  message has been claimable (0 with none).
- ``pgjobs_workers_live``: workers whose heartbeat lease runs (clients such as Flower
  or ``celery inspect`` are not counted).
- ``pgjobs_beat_leader{leader}``: 1 while a beat holds the leader lock, with its name;
  ``pgjobs_beat_last_pass_age_seconds``: since that leader's last pass.
- ``pgjobs_beat_schedule_lag_seconds``: how overdue the most overdue schedule entry is
  (0 when none is).
- ``pgjobs_task_results{task, state}``: results stored in ``celery_taskmeta`` that
  finished in the last ``--results-window`` seconds, per task and final state. The
  results table is the record every worker already writes, so this needs no agent in
  the workers and survives their restarts; it counts what the table holds, so results
  deleted by retention, or tasks with ``ignore_result``, are not counted.

With ``--events`` (the default), task outcome counters and a run-time histogram from the
workers' events too: see :mod:`config.ops.task_events`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import click
import psycopg
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from beat import store as beat_store
from broker.admin import Admin
from config.errors import one_line
from config.ops import snapshot as snap
from config.ops.common import Bounded, OneLineCommand, database_errors, database_url, settings
from config.ops.queries import QUERIES
from config.urls import sqlalchemy_url

STATES = ("ready", "scheduled", "in_flight", "dead")
MAX_RESULTS_WINDOW = 366 * 24 * 3600
"""The longest ``--results-window``: a year."""


class DatabaseCollector(Collector):
    """Reads every metric from the database when Prometheus scrapes."""

    def __init__(self, url: str, visibility_timeout: float, results_window: float) -> None:
        self._admin = Admin(url)
        self._engine = beat_store.create_engine(sqlalchemy_url(url))
        self._visibility_timeout = visibility_timeout
        self._results_window = results_window
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pgjobs_database_up", "1 if the database could be read")
        with self._lock:
            try:
                metrics = list(self._read())
            except (psycopg.Error, sa.exc.SQLAlchemyError) as error:
                self.last_error = one_line(error)
                self._admin.close()
                up.add_metric([], 0)
                yield up
                return
        self.last_error = None
        up.add_metric([], 1)
        yield up
        yield from metrics

    def close(self) -> None:
        self._admin.close()
        self._engine.dispose()

    def _read(self) -> Iterator[Metric]:
        current = snap.take(self._admin, self._engine, self._visibility_timeout)
        yield from _queue_metrics(current)
        workers = GaugeMetricFamily("pgjobs_workers_live", "Workers whose lease runs")
        workers.add_metric([], len(current.workers))
        yield workers
        yield from _beat_metrics(current)
        yield self._results()

    def _results(self) -> Metric:
        since = (datetime.now(UTC) - timedelta(seconds=self._results_window)).replace(
            tzinfo=None)
        rows = self._admin.connect().execute(QUERIES["task_outcomes"], {"since": since})
        family = GaugeMetricFamily(
            "pgjobs_task_results", "Results stored in the window, by task and state",
            labels=["task", "state"])
        for task, state, count in rows:
            family.add_metric([task, state], count)
        return family


def _queue_metrics(current: snap.Snapshot) -> Iterator[Metric]:
    messages = GaugeMetricFamily("pgjobs_queue_messages", "Messages by queue and state",
                                 labels=["queue", "state"])
    oldest = GaugeMetricFamily("pgjobs_queue_oldest_ready_age_seconds",
                               "Age of the longest-waiting ready message", labels=["queue"])
    for queue in current.queues:
        for state in STATES:
            messages.add_metric([queue.name, state], getattr(queue, state))
        oldest.add_metric([queue.name], queue.oldest_ready_age_s or 0.0)
    yield messages
    yield oldest


def _beat_metrics(current: snap.Snapshot) -> Iterator[Metric]:
    leader = GaugeMetricFamily("pgjobs_beat_leader", "1 while a beat leads",
                               labels=["leader"])
    last_pass = GaugeMetricFamily("pgjobs_beat_last_pass_age_seconds",
                                  "Seconds since the leading beat's last pass")
    if current.beat is not None:
        leader.add_metric([current.beat.leader], 1)
        if current.beat.last_pass_age_s is not None:
            last_pass.add_metric([], current.beat.last_pass_age_s)
    lag = GaugeMetricFamily("pgjobs_beat_schedule_lag_seconds",
                            "How overdue the most overdue schedule entry is")
    overdue = [datetime.now(UTC) - run.at for run in current.schedule]
    lag.add_metric([], max([0.0, *(d.total_seconds() for d in overdue)]))
    yield from (leader, last_pass, lag)


@click.command(cls=OneLineCommand)
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--results-window", "results_window", type=Bounded(1, MAX_RESULTS_WINDOW),
              default=3600.0, show_default=True,
              help="Seconds of finished tasks counted in pgjobs_task_results.")
@click.option("--events/--no-events", default=True, show_default=True,
              help="Count task outcomes and run times from the workers' events.")
def metrics(port: int, address: str, results_window: float, events: bool) -> None:
    """Serve Prometheus metrics on http://ADDRESS:PORT/metrics until interrupted."""
    url = database_url()
    _check_reachable(url)
    collector = DatabaseCollector(url, settings().visibility_timeout, results_window)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, address, registry=registry)
    except OSError as error:
        raise click.ClickException(f"cannot serve metrics on {address}:{port} ({error.strerror}"
                                   "); choose another --port or --address") from None
    if events:
        _count_task_events(registry)
    click.echo(f"pgjobs: serving metrics on http://{address}:{port}/metrics")
    try:
        while thread.is_alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        collector.close()


def _check_reachable(url: str) -> None:
    """A database that cannot be reached at start is one line and exit 1, as for every
    command; once serving, an outage reads as ``pgjobs_database_up 0`` until it ends."""
    with database_errors(url), psycopg.connect(url, connect_timeout=5):
        pass


def _count_task_events(registry: CollectorRegistry) -> None:
    from config.celery import app
    from config.ops.task_events import TaskEvents

    TaskEvents(app, registry).start()
