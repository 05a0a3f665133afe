"""The tasks' database engine: one per process, created on first use.

Celery's prefork pool forks workers from a parent that may already hold pooled
connections; a forked child must never reuse its parent's sockets, so the engine
forgets (without closing) inherited connections right after a fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError

from config.settings import get_settings
from config.urls import sqlalchemy_url

_lock = threading.Lock()
_engine: Engine | None = None
_engine_url: str | None = None
_lending = threading.local()  # set while lend() checks a connection out


def engine() -> Engine:
    """The engine for the current ``DATABASE_URL``; a changed URL gets a new engine."""
    global _engine, _engine_url
    url = sqlalchemy_url(get_settings().require_database_url())
    with _lock:
        if _engine is None or url != _engine_url:
            if _engine is not None:
                _engine.dispose()
            _engine = _create(url, get_settings().prepared_statements)
            _engine_url = url
        return _engine


def _create(url: str, prepare: bool) -> Engine:
    created = create_engine(
        url,
        pool_size=2,
        max_overflow=2,
        # Server-side prepared statements (psycopg's default) only where DATABASE_URL is no
        # transaction-pooling PgBouncer (see DATABASE_PREPARED_STATEMENTS).
        connect_args={} if prepare else {"prepare_threshold": None},
    )
    # SQLAlchemy's pre-ping (pool_pre_ping), but not for a loan (see lend()).
    event.listen(created, "checkout", _pinger(created))
    return created


def _pinger(pinging: Engine) -> Callable[[psycopg.Connection, object, object], None]:
    def ping(dbapi_connection: psycopg.Connection, record: object, proxy: object) -> None:
        """Ping a connection checked out for the tasks, as pool_pre_ping would (a dead one is
        replaced; sqlalchemy_url sets the connect timeout). A loan is not pinged: its
        borrowers drop a connection that fails and retry, so a ping would only add a round
        trip to every stored result and publish."""
        if getattr(_lending, "active", False):
            return
        try:
            pinging.dialect.do_ping(dbapi_connection)
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            raise DisconnectionError(str(error)) from error

    return ping


@contextmanager
def lend() -> Iterator[psycopg.Connection]:
    """A connection of the engine's pool, as a plain psycopg connection in autocommit with no
    transaction open, for one operation of another library (the result backend, the broker's
    publishing); then back to the pool, out of autocommit again. In autocommit a statement on
    its own is one round trip (a stored result, a publish), where a transaction would add its
    BEGIN and COMMIT; a borrower's ``transaction()`` still opens one. Nor is a loan pinged at
    checkout: a connection that fails is dropped from the pool rather than handed out again,
    and its borrower retries. Failures are the driver's errors,
    not SQLAlchemy's wrappers: those libraries, and kombu's and Celery's retries, know
    psycopg's."""
    _lending.active = True
    try:
        pooled = engine().raw_connection()
    except DBAPIError as error:
        raise error.orig from None
    finally:
        _lending.active = False
    conn = pooled.driver_connection
    try:
        conn.autocommit = True
        yield conn
    except (psycopg.OperationalError, psycopg.InterfaceError):
        pooled.invalidate()
        raise
    finally:
        if not _out_of_autocommit(conn):
            pooled.invalidate()
        pooled.close()


def _out_of_autocommit(conn: psycopg.Connection) -> bool:
    """Put a lent connection back as SQLAlchemy's pool hands it out; False if it cannot be."""
    if conn.closed:
        return True  # the pool replaces it anyway
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = False
    except psycopg.Error:
        return False
    return True


def _forget_inherited_connections() -> None:
    if _engine is not None:
        _engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)
