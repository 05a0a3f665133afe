"""A database that cannot be used: each command fails in one line, in bounded time, with the
advice that can fix it (and `pgjobs migrate` only where migrating helps)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

BIN = Path(sys.executable).parent
PGJOBS = [sys.executable, "-c", "from config.cli import main; main()"]


def pgjobs(database_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``pgjobs ARGS`` against ``database_url``; a hang fails the test by timing out."""
    env = {"DATABASE_URL": database_url, "PATH": str(BIN)}
    return subprocess.run([*PGJOBS, *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("command", [["schedule", "list"], ["migrate"]])
def test_a_server_that_never_answers_fails_within_the_connect_timeout(
        silent_server: int, command: list[str], tmp_path: Path) -> None:
    # Given a DATABASE_URL whose server accepts TCP and never answers
    url = f"postgresql://u:hunter2@127.0.0.1:{silent_server}/db"

    # When a command connects to it
    result = pgjobs(url, *command, cwd=tmp_path)

    # Then it gives up (instead of hanging) with one line saying what to check
    line = one_line_failure(result)
    assert "timeout expired" in line
    assert "check that PostgreSQL is running and the host and port in DATABASE_URL" in line
    assert "hunter2" not in line


def url_with(server_url: str, **parts: str) -> str:
    return make_url(server_url).set(**parts).render_as_string(hide_password=False)


@pytest.mark.parametrize("command", [["schedule", "list"], ["migrate"]])
def test_a_missing_database_is_told_to_create_it_not_to_migrate(
        pg_server_url: str, command: list[str], tmp_path: Path) -> None:
    # Given a DATABASE_URL naming a database that does not exist
    url = url_with(pg_server_url, database="pgjobs_no_such_database")

    # When a command uses it
    line = one_line_failure(pgjobs(url, *command, cwd=tmp_path))

    # Then the advice is to create it: migrating cannot help
    assert 'database "pgjobs_no_such_database" does not exist' in line
    assert "create that database" in line
    assert "migrate" not in line


@pytest.mark.parametrize("command", [["schedule", "list"], ["migrate"]])
def test_a_missing_role_is_told_to_check_the_user_not_to_migrate(
        pg_server_url: str, command: list[str], tmp_path: Path) -> None:
    # Given a DATABASE_URL naming a role that does not exist
    url = url_with(pg_server_url, username="pgjobs_no_such_role", password="hunter2")

    # When a command uses it
    line = one_line_failure(pgjobs(url, *command, cwd=tmp_path))

    # Then the advice is about the user and password: migrating cannot help
    assert 'role "pgjobs_no_such_role" does not exist' in line
    assert "check the user and password in DATABASE_URL" in line
    assert "migrate" not in line
    assert "hunter2" not in line


def test_missing_tables_are_told_to_migrate(empty_db: str, tmp_path: Path) -> None:
    # Given a database that exists but was never migrated
    # When the schedule is listed
    line = one_line_failure(pgjobs(empty_db, "schedule", "list", cwd=tmp_path))

    # Then, and only then, the advice is `pgjobs migrate`
    assert "does not exist" in line
    assert line.endswith("run `pgjobs migrate` to create the pgjobs tables")
