"""The Celery app the benchmark's workers run: ``celery -A bench.app worker``.

The same tasks and worker settings serve every broker; only the broker settings differ.
Tasks report to the benchmark over UDP on localhost (one datagram each), which costs the
worker a single system call and adds no load to any broker being measured.

Environment it reads (set by ``bench/run.py``):
- ``BENCH_BROKER``: ``pgjobs``, ``sqla``, ``redis`` or ``rabbitmq``.
- ``BENCH_DATABASE_URL``: ``postgresql://...`` of the benchmark's own database.
- ``BENCH_REDIS_URL``: ``redis://...`` for the Redis broker.
- ``BENCH_RABBITMQ_URL``: ``amqp://...`` for the RabbitMQ broker (default
  :data:`RABBITMQ_URL`).
- ``BENCH_KEY_PREFIX``: prefix of every Redis key of this run (so they can be removed).
- ``BENCH_QUEUE``: the queue the tasks go to.
- ``BENCH_REPORT_TO``: ``host:port`` of the benchmark's UDP socket.
- ``BENCH_BACKEND``: unset (results ignored) or the result backend of ``bench/results.py``:
  ``pgjobs``, ``db`` or ``redis``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Celery

from config.urls import sqlalchemy_url

NOOP = "bench.noop"
PROBE = "bench.probe"
SLEEP = "bench.sleep"
PART = "bench.part"
COLLECT = "bench.collect"
BROKERS = ("pgjobs", "sqla", "redis", "rabbitmq")
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
BACKENDS = ("pgjobs", "db", "redis")


def broker_settings(broker: str, database_url: str, redis_url: str, prefix: str) -> dict:
    """Celery's broker settings for ``broker``; each transport keeps its own defaults, but
    pgjobs' prepares its statements, as pgjobs' config does on a direct connection."""
    if broker == "pgjobs":
        return {"broker_url": database_url, "broker_transport": "broker.transport:Transport",
                "broker_transport_options": {"prepared_statements": True}}
    if broker == "sqla":
        return {"broker_url": "sqla+" + sqlalchemy_url(database_url)}
    if broker == "redis":
        return {"broker_url": redis_url,
                "broker_transport_options": {"global_keyprefix": prefix}}
    if broker == "rabbitmq":
        return {"broker_url": os.environ.get("BENCH_RABBITMQ_URL", RABBITMQ_URL)}
    raise ValueError(f"unknown broker {broker!r}; use one of {', '.join(BROKERS)}")


def backend_settings(backend: str | None, database_url: str, redis_url: str,
                     prefix: str) -> dict:
    """Celery's result settings for ``backend`` (None: results ignored)."""
    if backend is None:
        return {"task_ignore_result": True}
    if backend == "pgjobs":  # prepared statements, as pgjobs' config sets them
        return {"result_backend": "broker.results:PostgresBackend+" + database_url,
                "result_backend_transport_options": {"prepared_statements": True}}
    if backend == "db":
        return {"result_backend": "db+" + sqlalchemy_url(database_url),
                "database_create_tables_at_setup": False,
                "database_engine_options": {"connect_args": {"options": "-c timezone=UTC"}}}
    if backend == "redis":
        return {"result_backend": redis_url,
                "result_backend_transport_options": {"global_keyprefix": prefix}}
    raise ValueError(f"unknown result backend {backend!r}; use one of {', '.join(BACKENDS)}")


def build_app(broker: str, database_url: str, redis_url: str, prefix: str, queue: str,
              backend: str | None = None) -> Celery:
    """The benchmark app, with the worker settings pgjobs itself runs with."""
    app = Celery("bench", set_as_current=False)
    app.conf.update(
        {**broker_settings(broker, database_url, redis_url, prefix),
         **backend_settings(backend, database_url, redis_url, prefix)},
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=queue,
        # Same for every broker; kombu's SQLAlchemy transport cannot broadcast.
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    for name, function in ((NOOP, _noop), (PROBE, _probe), (SLEEP, _sleep), (PART, _part),
                           (COLLECT, _collect)):
        app.task(name=name, shared=False)(function)
    return app


class _Report:
    """One UDP socket per pool process."""

    sock: socket.socket | None = None

    @classmethod
    def send(cls, *fields: Any) -> None:
        if cls.sock is None:
            cls.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host, port = os.environ["BENCH_REPORT_TO"].rsplit(":", 1)
        cls.sock.sendto(" ".join(map(str, fields)).encode(), (host, int(port)))


def _noop() -> None:
    """Does nothing, then says when it started and ended."""
    started = time.time()
    _Report.send("noop", started, time.time())


def _probe(published_at: float) -> None:
    """Says when it was published and when it started."""
    _Report.send("probe", published_at, time.time())


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _part(index: int) -> int:
    return index


def _collect(values: list[int]) -> int:
    return len(values)


if os.environ.get("BENCH_BROKER"):
    app = build_app(
        os.environ["BENCH_BROKER"],
        os.environ.get("BENCH_DATABASE_URL", ""),
        os.environ.get("BENCH_REDIS_URL", ""),
        os.environ.get("BENCH_KEY_PREFIX", ""),
        os.environ.get("BENCH_QUEUE", "celery"),
        os.environ.get("BENCH_BACKEND") or None,
    )
