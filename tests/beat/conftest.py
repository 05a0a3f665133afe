"""Beat fixtures: in-process schedulers and real ``celery beat`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from beat_helpers import beat_command


@pytest.fixture
def make_scheduler(app_db: str) -> Iterator[Callable[..., object]]:
    """Build ``beat.scheduler.Scheduler`` objects on the test database; closed afterwards."""
    from beat.scheduler import Scheduler
    from config.celery import app

    made: list[Scheduler] = []

    def make(identity: str = "test-beat") -> Scheduler:
        scheduler = Scheduler(app=app, identity=identity)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


@pytest.fixture
def beat_processes(app_db: str, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen]]:
    """Start ``celery -A config beat`` processes on the test database; killed afterwards."""
    started: list[subprocess.Popen] = []
    env = {**os.environ, "DATABASE_URL": app_db}

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"beat-{len(started)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            beat_command(tmp_path / "unused-schedule"), env=env, stdout=log,
            stderr=subprocess.STDOUT, cwd=tmp_path)
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)



@pytest.fixture(autouse=True, scope="session")
def _declare_test_task() -> None:
    """``beat_test.record``: the task the beat tests schedule. Declared on the app, so that
    ``pgjobs schedule add`` knows it; the tests read its messages from the queue, no worker
    runs it."""
    from config.celery import app

    @app.task(name="beat_test.record")
    def record(*args: object, **kwargs: object) -> None:
        """Never run: the tests drain its messages themselves."""
