"""Real ``celery -A config`` processes for the operator tests, killed at teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def process_env(database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "TEST_DATABASE_URL"}
    env.update(DATABASE_URL=database_url, PYTHONPATH=str(REPO),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} ---\n" + "\n".join(self.text().splitlines()[-lines:])

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


@dataclass
class Processes:
    """Starts ``celery -A config ...`` (or any command) and kills all of them at the end."""

    env: dict[str, str]
    logdir: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, *command: str) -> Process:
        log = self.logdir / f"{name}-{len(self.started)}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(list(command), cwd=self.logdir, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        process = Process(name, popen, log)
        self.started.append(process)
        return process

    def worker(self, name: str) -> Process:
        """A ``celery -A config worker`` named ``name@<host>``, once it is ready."""
        worker = self.start(name, str(BIN / "celery"), "-A", "config", "worker", "-n",
                            f"{name}@%h", "-c", "1", "-l", "INFO")
        wait_until(lambda: self._ready(worker), 60, f"worker {name} to be ready", worker.tail)
        return worker

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), cwd=self.logdir, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def celery(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "celery"), "-A", "config", *args)

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.started)

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()

    @staticmethod
    def _ready(process: Process) -> bool:
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited early\n{process.tail()}")
        return " ready." in process.text()


def nodename(name: str) -> str:
    return f"{name}@{os.uname().nodename}"
