"""Start-up checks: fail in one line, before Celery starts retrying in the background."""

from __future__ import annotations

import psycopg

from broker.urls import redact
from config.errors import advice, one_line
from config.settings import SettingsError
from config.urls import with_connect_timeout


def check_database(url: str, *, granted: bool = False) -> None:
    """Raise SettingsError naming DATABASE_URL, and what can fix it, when PostgreSQL cannot
    be reached at ``url``; with ``granted``, also when its role lacks a privilege that
    workers and beats need on the pgjobs tables (they would otherwise retry for ever)."""
    lacking = None
    try:
        with psycopg.connect(with_connect_timeout(url)) as conn:
            conn.execute("SELECT 1")
            if granted:
                from config.grants import privileges_lacking

                lacking = privileges_lacking(conn)
    except psycopg.Error as error:
        raise SettingsError(unreachable(url, error)) from None
    if lacking and lacking[1]:
        raise SettingsError(not_granted(*lacking))


def not_granted(role: str, missing: list[tuple[str, str]]) -> str:
    """The one line naming ``role``, the first privilege it lacks, and `pgjobs grant`."""
    relation, privilege = missing[0]
    more = f" and {len(missing) - 1} more privileges" if len(missing) > 1 else ""
    return (f"DATABASE_URL: role {role} lacks {privilege} on {relation}{more} that pgjobs "
            f"needs; run `pgjobs grant {role}` with the DATABASE_URL that `pgjobs migrate` "
            "runs with")


def unreachable(url: str, error: BaseException) -> str:
    """The one line naming DATABASE_URL (password masked), why it cannot be reached, and what
    can fix it."""
    return (f"DATABASE_URL: cannot connect to {redact(url)} ({one_line(error)}); "
            f"{advice(error) or 'check DATABASE_URL'}")
