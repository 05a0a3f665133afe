"""Fixtures for the operator commands: the ``pgjobs`` CLI in-process, and SQL on the test
database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from config.cli import main

Cli = Callable[..., Result]
Sql = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def cli(app_db: str) -> Cli:
    """``pgjobs ARGS...`` on the test's database; the result has exit_code, stdout, stderr."""
    from config.settings import get_settings

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        get_settings.cache_clear()  # a real command reads its settings once, at start
        try:
            return CliRunner().invoke(main, list(args), env=env)
        finally:
            get_settings.cache_clear()

    return run


@pytest.fixture
def sql(app_db: str) -> Sql:
    def run(statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(app_db, autocommit=True) as conn:
            cursor = conn.execute(statement, params or {})  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    return run


@pytest.fixture
def processes(app_db: str, tmp_path):
    """Real processes on the test's database (see :mod:`processes`)."""
    from processes import Processes, process_env

    started = Processes(process_env(app_db), tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
