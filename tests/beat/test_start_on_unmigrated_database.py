"""Acceptance: a worker, like beat, refuses to start on a database `pgjobs migrate` has not
brought up to date (README, "Rolling upgrades"), where kombu would otherwise retry the
broker's schema check for ever. Beside beat's own test of the same promise
(test_beat_failover.py), reusing its fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest
from beat_helpers import BIN, beat_command
from sqlalchemy.engine import make_url

from broker.urls import redact

pytestmark = pytest.mark.acceptance

# The worker checks before it consumes: one connection, no retry. Retrying instead, it would
# still be sleeping between attempts (2, 4, 6... seconds) when this bound runs out.
EXIT_WITHIN = 30
PASSWORD = "s3cret-not-shown"


def _behind_by_one(db_url: str) -> None:
    """Undo the newest broker migration's part that the code checks for."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP FUNCTION pgjobs_broker_wake_one(text, text, boolean)")


def _with_password(url: str) -> str:
    """``url`` with a password (trust auth ignores it), to prove it stays out of the line."""
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def _run(command: list[str], db_url: str, cwd: Path) -> tuple[int, str]:
    """Run ``command`` on ``db_url``; its exit status and output, or AssertionError when it
    is still running after EXIT_WITHIN seconds (its process group is killed)."""
    env = {**os.environ, "DATABASE_URL": _with_password(db_url)}
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the worker's pool children too
        output, _ = process.communicate()
        raise AssertionError(f"kept running on an out-of-date database:\n{output}") from None
    return process.returncode, output


def _assert_refused(returncode: int, output: str, db_url: str) -> None:
    """Non-zero, one line naming the database (password masked) and `pgjobs migrate`."""
    assert returncode != 0, output
    advice = [line for line in output.splitlines() if "pgjobs migrate" in line]
    assert len(advice) == 1, output
    assert redact(_with_password(db_url)) in advice[0], advice
    assert "Traceback" not in output
    assert PASSWORD not in output
    assert "Trying again" not in output


def _worker_command() -> list[str]:
    """``celery -A config worker`` as the Procfile runs it."""
    return [str(BIN / "celery"), "-A", "config", "worker", "--loglevel=info", "-c", "1"]


def test_worker_on_an_unmigrated_database_exits_saying_to_migrate(
        empty_db: str, tmp_path: Path) -> None:
    # Given a database that was never migrated
    # When a worker starts on it
    returncode, output = _run(_worker_command(), empty_db, tmp_path)

    # Then it exits non-zero at once, with one line saying to run `pgjobs migrate`
    _assert_refused(returncode, output, empty_db)
    assert "ready." not in output


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_a_database_one_migration_behind_is_refused(
        role: str, db_url: str, tmp_path: Path) -> None:
    # Given a database without the newest broker migration
    _behind_by_one(db_url)
    command = _worker_command() if role == "worker" else beat_command(tmp_path / "schedule")

    # When a worker or a beat of this release starts on it
    returncode, output = _run(command, db_url, tmp_path)

    # Then it exits non-zero, with one line saying to run `pgjobs migrate`
    _assert_refused(returncode, output, db_url)
    assert "predate" in output
