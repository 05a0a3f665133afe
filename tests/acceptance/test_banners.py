"""Worker and beat banners show where they connect, never the password."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.conftest import BIN
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

# What each process prints once its banner (with the database URL) is out.
STARTED = {"worker": "ready.", "beat": "beat: Starting..."}


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_the_banner_masks_a_password_given_as_a_url_parameter(
        app_db: str, role: str, tmp_path: Path) -> None:
    # Given a DATABASE_URL with the password as a libpq parameter (the test server trusts
    # local connections, so any password connects)
    joiner = "&" if "?" in app_db else "?"
    env = {**os.environ, "DATABASE_URL": f"{app_db}{joiner}password=hunter2"}
    log = tmp_path / f"{role}.log"

    # When the process starts and prints its banner
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "celery"), "-A", "config", role, "-l", "info", "--pidfile=",
             *(["-s", str(tmp_path / "unused-schedule")] if role == "beat" else ["-c", "1"])],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_until(lambda: STARTED[role] in log.read_text(), 60, f"the {role} banner",
                   log.read_text)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    # Then it names the database, with the password masked
    text = log.read_text()
    assert "password=**" in text
    assert "hunter2" not in text
