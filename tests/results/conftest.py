"""Fixtures for the result backend's tests: the test app, and real ``celery worker``s.

``results`` gives a publisher app on the test's own database (pgjobs broker and backend, a
30 s safety-net poll) and starts workers of :mod:`tests.results.results_app` on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from celery import Celery

from tests.polling import wait_until
from tests.results import results_app

REPO = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return f"--- {self.name} log ---\n" + "\n".join(self.text().splitlines()[-40:])

    def kill(self) -> None:
        """SIGKILL the worker and its pool children."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class Results:
    database_url: str
    app: Celery
    env: dict[str, str]
    logdir: Path
    queue: str
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, name: str = "w", concurrency: int = 2) -> Worker:
        log = self.logdir / f"{name}.log"
        command = [str(CELERY), "-A", "tests.results.results_app", "worker", "-n",
                   f"{name}@%h", "-P", "prefork", "-c", str(concurrency), "-l", "INFO",
                   "--without-mingle", "--without-gossip"]
        with log.open("ab") as out:
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        worker = Worker(name, process, log)
        self.workers.append(worker)
        wait_until(lambda: self._ready(worker), 60, f"worker {name} to be ready", worker.tail)
        return worker

    @staticmethod
    def _ready(worker: Worker) -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker {worker.name} exited\n{worker.tail()}")
        return " ready." in worker.text()

    def logs(self) -> str:
        return "\n".join(worker.tail() for worker in self.workers)

    def runs(self, task: str) -> list[tuple[str, str | None]]:
        """``(key, value)`` of every recorded run of ``task`` (part, callback, errback)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute("SELECT key, value FROM results_test_runs WHERE task = %s "
                                "ORDER BY id", (task,)).fetchall()

    def queue_empty(self) -> bool:
        """Whether every task message was acknowledged (acks late: after its task ran)."""
        (count,) = self.query("SELECT count(*) FROM pgjobs_broker_message WHERE queue = %s",
                              (self.queue,))[0]
        return count == 0

    def query(self, statement: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()


@pytest.fixture
def results(db_url: str, tmp_path: Path) -> Iterator[Results]:
    queue = f"results-test-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(results_app.CREATE_RUNS)
    app = results_app.build_app(db_url, queue, poll_interval=30.0)
    env = {key: value for key, value in os.environ.items() if key != "TEST_DATABASE_URL"}
    env.update(DATABASE_URL=db_url, RESULTS_TEST_QUEUE=queue, RESULTS_TEST_POLL_INTERVAL="30",
               PYTHONPATH=str(REPO))
    value = Results(db_url, app, env, tmp_path, queue)
    try:
        yield value
    finally:
        for worker in value.workers:
            worker.kill()
        backend = app.backend
        if hasattr(backend, "database"):  # RESULTS_TEST_BACKEND=db has neither
            backend.result_consumer.stop()
            backend.database.discard()
        app.amqp.producer_pool.force_close_all()
        app.pool.force_close_all()
        app.close()
