"""Start-up checks: fail in one line, before Celery starts retrying in the background."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from broker.store import SchemaMissing, Store
from broker.urls import redact
from config.errors import advice, one_line
from config.settings import Settings, SettingsError
from config.urls import with_connect_timeout

# The server process serving this session; through a pooler it is not the one whose cancel
# key (BackendKeyData) the client was given at connection time.
_BACKEND = "SELECT pg_backend_pid()"


def check_database(url: str, name: str = "DATABASE_URL") -> None:
    """Raise SettingsError naming the setting ``name`` (the password masked), and what can
    fix it, when PostgreSQL cannot be reached at ``url``."""
    _connected(url, name, lambda conn: None)


def check_serving(settings: Settings) -> None:
    """What a worker or a beat checks before it starts, each failure one SettingsError line:
    PostgreSQL is reachable; the role may do what pgjobs does there (it would otherwise retry
    every refused statement for ever); and the connections that need a session of their own
    (LISTEN, beat's leader lock, prepared statements) do not go through a pooler, where they
    would share server sessions with other clients. A DATABASE_DIRECT_URL that is set is
    taken at its word: it may be a pooler that keeps sessions."""
    url, direct = settings.require_database_url(), settings.database_direct_url
    _connected(url, "DATABASE_URL", lambda conn: _served(conn, needs_session=direct is None))
    if direct is not None:  # beat's leader lock and lease, and the LISTEN connections
        _connected(direct, "DATABASE_DIRECT_URL",
                   lambda conn: _granted(conn, "DATABASE_DIRECT_URL"))
    if settings.broker_url and settings.broker_is_postgres:
        _connected(settings.broker_url, "BROKER_URL",
                   lambda conn: pooled("BROKER_URL") if _through_pooler(conn) else None)


def check_broker_schema(settings: Settings) -> None:
    """Raise SettingsError, one line naming the broker's database and `pgjobs migrate`, when
    that database lacks the broker tables or their newest migration. The transport checks the
    same on every connect, but kombu takes its refusal for an outage and retries for ever;
    here, before anything consumes or publishes, it is final. A database that cannot be
    reached now is left to the transport, which retries and says so."""
    if not settings.broker_is_postgres:
        return
    url = settings.require_broker_url()
    store = Store(with_connect_timeout(url))
    try:
        store.check_schema()
    except SchemaMissing as error:
        name = "BROKER_URL" if settings.broker_url else "DATABASE_URL"
        raise SettingsError(f"{name} ({redact(url)}): {error}") from None
    except psycopg.Error:
        return
    finally:
        store.close()


def _connected(url: str, name: str,
               check: Callable[[psycopg.Connection], str | None]) -> None:
    """Connect to ``url`` and run ``check`` on the connection; a failure to connect is one
    line naming ``name``."""
    problem = None
    try:
        with psycopg.connect(with_connect_timeout(url)) as conn:
            problem = check(conn)
    except psycopg.Error as error:
        raise SettingsError(unreachable(url, error, name)) from None
    if problem:
        raise SettingsError(problem)


def _served(conn: psycopg.Connection, needs_session: bool) -> str | None:
    """What is wrong with DATABASE_URL's connection for a worker or a beat, or None."""
    if needs_session and _through_pooler(conn):
        return pooled("DATABASE_URL")
    return _granted(conn, "DATABASE_URL")


def _granted(conn: psycopg.Connection, name: str) -> str | None:
    """The one line naming what the role of ``name`` lacks of pgjobs grant's plan, or None."""
    from config.grants import privileges_lacking

    lacking = privileges_lacking(conn)
    return not_granted(*lacking, name) if lacking and lacking[1] else None


def _through_pooler(conn: psycopg.Connection) -> bool:
    (backend,) = conn.execute(_BACKEND).fetchone()
    return backend != conn.info.backend_pid


def pooled(name: str) -> str:
    """The one line saying that ``name`` reaches a pooler where a session is needed."""
    if name == "DATABASE_URL":
        return ("DATABASE_URL goes through a connection pooler (such as PgBouncer): set "
                "DATABASE_DIRECT_URL to PostgreSQL itself (or, for a pooler in session mode, "
                "to the same URL), for the connections that need a session of their own "
                "(LISTEN, beat's leader lock, prepared statements)")
    return (f"{name} goes through a connection pooler (such as PgBouncer): point it at "
            "PostgreSQL itself, or leave it unset for the broker to share DATABASE_URL and "
            "DATABASE_DIRECT_URL")


def not_granted(role: str, missing: list[tuple[str, str]], name: str = "DATABASE_URL") -> str:
    """The one line naming the setting ``name``, its ``role``, the first privilege it lacks,
    and `pgjobs grant`."""
    relation, privilege = missing[0]
    more = f" and {len(missing) - 1} more privileges" if len(missing) > 1 else ""
    return (f"{name}: role {role} lacks {privilege} on {relation}{more} that pgjobs "
            f"needs; run `pgjobs grant {role}` with the DATABASE_URL that `pgjobs migrate` "
            "runs with")


def unreachable(url: str, error: BaseException, name: str = "DATABASE_URL") -> str:
    """The one line naming the setting ``name`` (password masked), why it cannot be
    reached, and what can fix it."""
    return (f"{name}: cannot connect to {redact(url)} ({one_line(error)}); "
            f"{advice(error, name) or f'check {name}'}")
