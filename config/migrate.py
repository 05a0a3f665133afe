"""Apply pgjobs' Alembic migrations; safe to run twice, and from two processes at once."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from config.urls import sqlalchemy_url

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every `pgjobs migrate`.
_MIGRATION_LOCK = 0x70676A6F62730001


def alembic_config() -> Config:
    """An Alembic config pointing at pgjobs' migrations, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database at ``database_url`` to ``revision``, holding an advisory lock so
    that two release phases never migrate at once. Returns the revisions it found and left
    (None for a database without pgjobs' tables); equal when nothing was applied."""
    engine = sa.create_engine(sqlalchemy_url(database_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            before = current_revision(connection)
            connection.commit()
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
            after = current_revision(connection)
            connection.commit()
    finally:
        engine.dispose()
    return before, after


def current_revision(connection: sa.Connection) -> str | None:
    """The revision the database is at, or None before the first migration."""
    return MigrationContext.configure(connection).get_current_revision()
