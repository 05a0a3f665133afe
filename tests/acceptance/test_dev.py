"""``pgjobs dev``: zero set-up on an embedded PostgreSQL, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

from tests.acceptance.conftest import BIN
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

ENQUEUE = """
from tasks import send_sign_in_email
send_sign_in_email.delay("grace@example.com", "Grace", "777111")
"""


def test_dev_runs_jobs_on_embedded_database_and_stops_on_ctrl_c(tmp_path):
    # given no DATABASE_URL and no SMTP_URL
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(DATA_DIR=str(tmp_path / "pgdata"), OUTBOX_DIR=str(tmp_path / "outbox"),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        dev = subprocess.Popen([str(BIN / "pgjobs"), "dev", "-c", "1"], env=env, cwd=tmp_path,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # when pgjobs dev is up and a sign-in email is queued against its database
        match = wait_until(lambda: re.search(r"DATABASE_URL=(\S+)", log.read_text()), 90,
                           "the embedded database")
        wait_until(lambda: "ready." in log.read_text(), 90, "the worker")
        subprocess.run([sys.executable, "-c", ENQUEUE], env={**env, "DATABASE_URL": match[1]},
                       check=True, timeout=60, cwd=tmp_path)

        # then the email lands in the outbox
        outbox = tmp_path / "outbox"
        wait_until(lambda: outbox.is_dir() and list(outbox.glob("*.eml")), 60, "the outbox email")
        assert "777111" in next(outbox.glob("*.eml")).read_text()

        # and Ctrl-C stops worker, beat and the embedded server, with exit status 0
        os.killpg(dev.pid, signal.SIGINT)
        assert dev.wait(timeout=60) == 0
        assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()


def test_sigterm_stops_worker_and_beat_like_ctrl_c(app_db, tmp_path):
    # given pgjobs dev running a worker and a beat on a database
    env = {**os.environ, "DATABASE_URL": app_db,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        dev = subprocess.Popen([str(BIN / "pgjobs"), "dev", "-c", "1"], env=env, cwd=tmp_path,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "ready." in log.read_text() and "beat: Starting" in log.read_text(),
                   90, "the worker and beat", log.read_text)
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 2

        # when it alone (not its process group) receives SIGTERM, as from a process manager
        dev.send_signal(signal.SIGTERM)

        # then it exits 0 once every worker and beat process is gone: none is orphaned
        assert dev.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        # The group outlives its leader: this also ends children that pgjobs dev orphaned.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)
        dev.wait()
