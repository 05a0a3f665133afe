"""A small Celery app for the result backend's process tests: pgjobs broker and backend.

Workers run it as ``celery -A tests.results.results_app worker``; tests import it to send
with the very same settings. Tasks that must be counted write one row per run to
``results_test_runs``.

Environment it reads (set by the test that starts the worker):
- ``DATABASE_URL``: the test's database (broker, results, runs table).
- ``RESULTS_TEST_QUEUE``: the queue tasks go to.
- ``RESULTS_TEST_POLL_INTERVAL``: the backend's safety-net poll, in seconds (default 30).
- ``RESULTS_TEST_TRACK_STARTED``: ``0`` turns ``task_track_started`` off (default on).
- ``RESULTS_TEST_BACKEND``: ``pgjobs`` (default, ``broker.results``), ``db`` (Celery's
  database backend, polling) or ``redis`` (``RESULTS_TEST_REDIS_URL``); the last two only
  exist to check the tests themselves.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
from celery import Celery, signals

from config.urls import sqlalchemy_url

CREATE_RUNS = """
CREATE TABLE IF NOT EXISTS results_test_runs (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    key text NOT NULL,
    value text
)
"""
INSERT_RUN = "INSERT INTO results_test_runs (task, key, value) VALUES (%s, %s, %s)"


BACKEND = os.environ.get("RESULTS_TEST_BACKEND", "pgjobs")


def backend_settings(database_url: str, poll_interval: float) -> dict[str, Any]:
    """The result backend settings of ``RESULTS_TEST_BACKEND``."""
    if BACKEND == "redis":
        return {"result_backend": os.environ.get("RESULTS_TEST_REDIS_URL",
                                                 "redis://127.0.0.1:6379/14")}
    if BACKEND == "db":
        return {"result_backend": "db+" + sqlalchemy_url(database_url),
                "database_create_tables_at_setup": False}
    return {"result_backend": "broker.results:PostgresBackend+" + database_url,
            "result_backend_transport_options": {"poll_interval": poll_interval}}


def build_app(database_url: str, queue: str = "celery", poll_interval: float = 30.0) -> Celery:
    """The test app: pgjobs broker, the backend under test, extended results, acks late."""
    app = Celery("results_test", set_as_current=False)
    app.conf.update(
        backend_settings(database_url, poll_interval),
        broker_url=database_url,
        broker_transport="broker.transport:Transport",
        broker_transport_options={"visibility_timeout": 3.0, "polling_interval": 0.5},
        broker_connection_retry_on_startup=True,
        result_extended=True,
        task_track_started=os.environ.get("RESULTS_TEST_TRACK_STARTED", "1") != "0",
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=queue,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        timezone="UTC",
        enable_utc=True,
    )
    _register(app)
    return app


def _record(task: str, key: str, value: Any = None) -> None:
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(INSERT_RUN, (task, key, None if value is None else repr(value)))


def add(x: int, y: int) -> int:
    return x + y


def sleep(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def fail(message: str) -> None:
    raise ValueError(message)


def part(key: str, value: Any, seconds: float = 0.0) -> Any:
    """A chord part that records each run; ``fail:`` values raise."""
    _record("part", key, value)
    time.sleep(seconds)
    if isinstance(value, str) and value.startswith("fail:"):
        raise ValueError(value)
    return value


def collect(values: list[Any], key: str) -> list[Any]:
    """A chord callback that records each run."""
    _record("callback", key, values)
    return values


def on_error(request: Any, exc: Exception, traceback: Any, key: str) -> None:
    """An errback that records each run."""
    _record("errback", key, repr(exc))


def retry_once(task: Any) -> str:
    if task.request.retries == 0:
        raise task.retry(exc=RuntimeError("first try"), countdown=3)
    return "second try"


def spawn(task: Any) -> str:
    task.app.tasks["rt.add"].delay(1, 1)
    return "spawned"


_TASKS = {"rt.add": (add, {}), "rt.sleep": (sleep, {}), "rt.fail": (fail, {}),
          "rt.part": (part, {}), "rt.collect": (collect, {}), "rt.on_error": (on_error, {}),
          "rt.retry_once": (retry_once, {"bind": True, "max_retries": 1}),
          "rt.spawn": (spawn, {"bind": True})}


@signals.task_postrun.connect
def _die_after_commit(sender: Any = None, args: Any = None, **_: Any) -> None:
    """A part sent with the value ``die-after-commit`` kills its whole worker (SIGKILL) once,
    after its result was stored and before its message is acknowledged."""
    if getattr(sender, "name", None) != "rt.part" or not args or args[1] != "die-after-commit":
        return
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        died = conn.execute("SELECT count(*) FROM results_test_runs WHERE task = 'died' "
                            "AND key = %s", (args[0],)).fetchone()[0]
        if died:
            return
        conn.execute(INSERT_RUN, ("died", args[0], None))
    os.killpg(os.getpgid(0), signal.SIGKILL)


@signals.task_postrun.connect
def _child_dies_after_result(sender: Any = None, args: Any = None, **_: Any) -> None:
    """A part sent with the value ``child-dies-after-result`` kills its pool process alone
    (SIGKILL) once, after its result was handed over or stored."""
    if getattr(sender, "name", None) != "rt.part" or not args or (
            args[1] != "child-dies-after-result"):
        return
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM results_test_runs WHERE task = 'died' AND "
                        "key = %s", (args[0],)).fetchone()[0]:
            return
        conn.execute(INSERT_RUN, ("died", args[0], None))
    os.kill(os.getpid(), signal.SIGKILL)


def _register(app: Celery) -> None:
    for name, (function, options) in _TASKS.items():
        app.task(name=name, shared=False, **options)(function)


app = build_app(
    os.environ.get("DATABASE_URL", ""),
    os.environ.get("RESULTS_TEST_QUEUE", "celery"),
    float(os.environ.get("RESULTS_TEST_POLL_INTERVAL", "30")),
)
