"""Apply pgjobs' Alembic migrations; safe to run twice, and from two processes at once."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from config.urls import sqlalchemy_url

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every `pgjobs migrate`.
_MIGRATION_LOCK = 0x70676A6F62730001


def alembic_config() -> Config:
    """An Alembic config pointing at pgjobs' migrations, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``database_url`` to ``revision``, holding an advisory lock so
    that two release phases never migrate at once."""
    engine = sa.create_engine(sqlalchemy_url(database_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
            connection.commit()
    finally:
        engine.dispose()
