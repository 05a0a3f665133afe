"""Start-up checks: fail in one line, before Celery starts retrying in the background."""

from __future__ import annotations

import psycopg

from broker.urls import redact
from config.errors import advice, one_line
from config.settings import SettingsError
from config.urls import with_connect_timeout


def check_database(url: str) -> None:
    """Raise SettingsError naming DATABASE_URL, and what can fix it, when PostgreSQL cannot
    be reached at ``url``."""
    try:
        with psycopg.connect(with_connect_timeout(url)) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        raise SettingsError(unreachable(url, error)) from None


def unreachable(url: str, error: BaseException) -> str:
    """The one line naming DATABASE_URL (password masked), why it cannot be reached, and what
    can fix it."""
    return (f"DATABASE_URL: cannot connect to {redact(url)} ({one_line(error)}); "
            f"{advice(error) or 'check DATABASE_URL'}")
