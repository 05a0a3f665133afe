"""A small Celery app for the process-level broker tests.

Workers run it as ``celery -A tests.broker_processes.process_app worker``; the tests import
it to publish with the very same settings. Every run of :func:`record` writes a ``started``
and a ``done`` row to ``process_test_runs``, so a test can count executions per key.

Environment it reads (all set by the test that starts the worker):
- ``DATABASE_URL``: the test's database; holds the runs table, and the messages for the
  PostgreSQL transports.
- ``PROCESS_TEST_BROKER``: ``pgjobs`` (default, ``broker.transport``), ``sqla`` (kombu's
  SQLAlchemy transport) or ``redis``; the last two only check the tests themselves.
- ``PROCESS_TEST_REDIS_URL``: the Redis URL for ``redis`` (default ``redis://127.0.0.1:6379/13``).
- ``PROCESS_TEST_QUEUE``: the queue tasks go to (default ``celery``).
- ``VISIBILITY_TIMEOUT``: seconds after which a dead worker's messages go back (default 3).
- ``PROCESS_TEST_TRANSPORT_OPTIONS``: JSON object of extra pgjobs transport options.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import psycopg
from celery import Celery

from config.urls import sqlalchemy_url

CREATE_RUNS = """
CREATE TABLE IF NOT EXISTS process_test_runs (
    id bigserial PRIMARY KEY,
    key text NOT NULL,
    phase text NOT NULL CHECK (phase IN ('started', 'done')),
    worker text NOT NULL,
    at double precision NOT NULL
)
"""
INSERT_RUN = "INSERT INTO process_test_runs (key, phase, worker, at) VALUES (%s, %s, %s, %s)"
RECORD_TASK = "process_test.record"
# A task whose row cannot be written waits this long for the database to come back.
_DATABASE_PATIENCE = 60.0


def broker_settings(
    broker: str, database_url: str, queue: str, visibility_timeout: float
) -> dict[str, Any]:
    """Celery settings selecting ``broker``; ValueError names an unknown one."""
    if broker == "pgjobs":
        return {
            "broker_url": database_url,
            "broker_transport": "broker.transport:Transport",
            "broker_transport_options": {
                "visibility_timeout": visibility_timeout,
                "polling_interval": 0.5,
                **json.loads(os.environ.get("PROCESS_TEST_TRANSPORT_OPTIONS") or "{}"),
            },
        }
    if broker == "sqla":
        return {"broker_url": "sqla+" + sqlalchemy_url(database_url)}
    if broker == "redis":
        redis_url = os.environ.get("PROCESS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
        return {
            "broker_url": redis_url,
            "broker_transport_options": {
                "visibility_timeout": visibility_timeout,
                # One key space per test, as each test has a database of its own.
                "global_keyprefix": f"{queue}:",
                # Sweep for a dead worker's messages every second, not every 100.
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
            },
        }
    raise ValueError(f"PROCESS_TEST_BROKER={broker!r} is unknown; use pgjobs, sqla or redis")


def build_app(
    database_url: str, broker: str = "pgjobs", queue: str = "celery", visibility_timeout: float = 3
) -> Celery:
    """The test app: JSON only, acks late, a dead worker's task goes back to the queue."""
    app = Celery("process_test", set_as_current=False)
    app.conf.update(
        broker_settings(broker, database_url, queue, visibility_timeout),
        broker_connection_retry_on_startup=True,
        accept_content=["json"],
        task_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=queue,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )
    app.task(name=RECORD_TASK, bind=True)(_record)
    return app


class _Runs:
    """One connection per worker process, reopened when the database went away."""

    connection: psycopg.Connection | None = None

    @classmethod
    def write(cls, key: str, phase: str, worker: str) -> None:
        deadline = time.monotonic() + _DATABASE_PATIENCE
        while True:
            try:
                cls._connect().execute(INSERT_RUN, (key, phase, worker, time.time()))
                return
            except psycopg.OperationalError:
                cls.connection = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @classmethod
    def _connect(cls) -> psycopg.Connection:
        if cls.connection is None or cls.connection.closed:
            # Dead network paths are among the faults under test: fail fast, then reconnect.
            cls.connection = psycopg.connect(
                os.environ["DATABASE_URL"], autocommit=True, connect_timeout=5, keepalives=1,
                keepalives_idle=1, keepalives_interval=1, keepalives_count=3,
                tcp_user_timeout=4000)
        return cls.connection


def _record(task: Any, key: str, seconds: float = 0.0) -> None:
    """Write a ``started`` row, sleep ``seconds``, write a ``done`` row."""
    worker = task.request.hostname or socket.gethostname()
    _Runs.write(key, "started", worker)
    time.sleep(seconds)
    _Runs.write(key, "done", worker)


app = build_app(
    os.environ.get("DATABASE_URL", ""),
    os.environ.get("PROCESS_TEST_BROKER", "pgjobs"),
    os.environ.get("PROCESS_TEST_QUEUE", "celery"),
    float(os.environ.get("VISIBILITY_TIMEOUT", "3")),
)
