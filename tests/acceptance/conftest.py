"""Acceptance fixtures: a real SMTP server and the Procfile's processes."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.tasks.task_helpers import Mailbox, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[Mailbox, str]]:
    inbox = Mailbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, f"smtp://127.0.0.1:{controller.port}"
    finally:
        controller.stop()


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())




@dataclass
class Processes:
    """Procfile processes started for one test; all killed at teardown."""

    env: dict[str, str]
    logdir: Path
    running: list[subprocess.Popen] = field(default_factory=list)

    def run(self, role: str) -> subprocess.CompletedProcess:
        return subprocess.run(shlex.split(procfile()[role]), env=self.env, cwd=self.logdir,
                              capture_output=True, text=True, timeout=120)

    def start(self, role: str, *extra: str) -> Path:
        """Start the Procfile's ``role``, with ``extra`` arguments; returns its log."""
        log = self.logdir / f"{role}-{len(self.running)}.log"
        with log.open("w") as out:
            self.running.append(subprocess.Popen(
                [*shlex.split(procfile()[role]), *extra], env=self.env, cwd=self.logdir,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        return log

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def procfile_env(app_db: str, smtp_inbox, tmp_path: Path) -> Iterator[Processes]:
    _, smtp_url = smtp_inbox
    env = {**os.environ, "DATABASE_URL": app_db, "SMTP_URL": smtp_url,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    processes = Processes(env=env, logdir=tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
