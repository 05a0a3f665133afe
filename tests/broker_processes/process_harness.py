"""Helpers for the process-level broker tests: worker subprocesses, run counts, waiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg

from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")
APP_MODULE = "tests.broker_processes.process_app"

DONE_PER_KEY = "SELECT key, count(*) FROM process_test_runs WHERE phase = 'done' GROUP BY key"
RUNS_OF_KEY = "SELECT phase, worker, at FROM process_test_runs WHERE key = %s ORDER BY id"
STARTED_NOT_DONE = """
SELECT DISTINCT key FROM process_test_runs s WHERE phase = 'started' AND NOT EXISTS (
    SELECT 1 FROM process_test_runs d WHERE d.key = s.key AND d.phase = 'done')
"""

T = TypeVar("T")




@dataclass
class Runs:
    """Reads the ``process_test_runs`` table the test tasks write to."""

    database_url: str

    def _query(self, statement: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()

    def done_per_key(self) -> Counter[str]:
        return Counter(dict(self._query(DONE_PER_KEY)))

    def of_key(self, key: str) -> list[tuple[str, str, float]]:
        return self._query(RUNS_OF_KEY, (key,))

    def running(self) -> set[str]:
        """Keys started at least once and never done."""
        return {key for (key,) in self._query(STARTED_NOT_DONE)}

    def all_done(self, keys: list[str]) -> bool:
        done = self.done_per_key()
        return all(done[key] >= 1 for key in keys)


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    @property
    def nodename(self) -> str:
        return f"{self.name}@{os.uname().nodename}"

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log (last {lines} lines) ---\n" + "\n".join(
            text.splitlines()[-lines:])

    def is_ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited early\n{self.tail()}")
        return " ready." in self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children, as a lost machine would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class Workers:
    """Starts ``celery worker`` subprocesses and kills every one of them in :meth:`kill_all`."""

    env: dict[str, str]
    logdir: Path
    started: list[Worker] = field(default_factory=list)
    # Runs each worker through this command, e.g. inside another network namespace.
    prefix: list[str] = field(default_factory=list)

    def start(self, name: str, concurrency: int = 1, ready_timeout: float = 60,
              pool: str = "prefork") -> Worker:
        log = self.logdir / f"{name}.log"
        command = [
            *self.prefix,
            str(CELERY), "-A", APP_MODULE, "worker", "-n", f"{name}@%h", "-P", pool,
            "-c", str(concurrency), "-l", "INFO", "--without-mingle", "--without-gossip",
        ]
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        worker = Worker(name, process, log)
        self.started.append(worker)
        wait_until(worker.is_ready, ready_timeout, f"worker {name} to be ready", worker.tail)
        return worker

    def logs(self) -> str:
        return "\n".join(worker.tail() for worker in self.started)

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()

    def inspect_ping(self, timeout: float = 5) -> dict[str, object]:
        """``celery -A ... inspect ping --json``: the replies, by node name."""
        result = subprocess.run(
            [str(CELERY), "-A", APP_MODULE, "inspect", "ping", "--json", "-t", str(timeout)],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout + 60)
        return _json_replies(result.stdout)


def _json_replies(stdout: str) -> dict[str, object]:
    replies: dict[str, object] = {}
    for line in stdout.splitlines():
        if line.strip().startswith("{"):
            replies.update(json.loads(line))
    return replies


def worker_env(database_url: str, broker: str, queue: str, visibility_timeout: float) -> dict:
    """The environment a worker of :mod:`process_app` runs with."""
    env = {key: value for key, value in os.environ.items() if key != "TEST_DATABASE_URL"}
    env.update(
        DATABASE_URL=database_url,
        PROCESS_TEST_BROKER=broker,
        PROCESS_TEST_QUEUE=queue,
        VISIBILITY_TIMEOUT=str(visibility_timeout),
        PYTHONPATH=str(REPO),
    )
    return env
