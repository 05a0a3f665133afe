"""Beat fixtures: in-process schedulers and real ``celery beat`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _reconfigure_app() -> None:
    from config import celery as celery_module
    from config.celeryconfig import celery_config
    from config.settings import get_settings

    get_settings.cache_clear()
    app = celery_module.app
    app.conf.update(celery_config(get_settings()))
    # Celery 5.7 refuses `app._backend = None` (the suite's app_db does that): forget the
    # cached backend by hand instead.
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)
    if app._pool is not None:
        app._pool.force_close_all()
    app._after_fork()  # drops the producer pool bound to the previous broker URL


@pytest.fixture
def app_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The suite's ``app_db``: settings and the Celery app point at this test's database."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    _reconfigure_app()
    yield db_url
    monkeypatch.undo()
    _reconfigure_app()


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
            [str(BIN / "celery"), "-A", "config", "beat", "--pidfile=", "-l", "info",
             "-s", str(tmp_path / "unused-schedule")],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

