"""Start-up checks: fail in one line, before Celery starts retrying in the background."""

from __future__ import annotations

import psycopg

from config.errors import one_line
from config.settings import SettingsError
from config.urls import redact_url

CONNECT_TIMEOUT_SECONDS = 5


def check_database(url: str) -> None:
    """Raise SettingsError naming DATABASE_URL when PostgreSQL cannot be reached at ``url``."""
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        raise SettingsError(unreachable(url, error)) from None


def unreachable(url: str, error: BaseException) -> str:
    """The one line naming DATABASE_URL (password masked) and why it cannot be reached."""
    return (f"DATABASE_URL: cannot connect to {redact_url(url)} ({one_line(error)}); "
            "check that PostgreSQL is running and the URL is right")
