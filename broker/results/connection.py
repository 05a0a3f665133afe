"""The result backend's one database connection per process, and its named queries.

Every backend object of a process on the same database shares one :class:`Database`: one
autocommit psycopg connection, opened lazily, reopened after it broke, and never reused
across ``fork()`` (a pool child opens its own; the parent's is left alone, since closing it
in the child would end the parent's session too). A lock serialises its use between threads;
a forked child gets new locks, since the thread holding one at the fork is not in the child.

A process that already has a pool of connections to the same database (a worker's pool
child, with the tasks' own engine) can lend it to the backend instead
(:func:`lend_connections`): then the backend borrows one connection per operation and opens
none of its own. The lenders are those of :mod:`broker.lending`, which the transport's
publishing borrows from too, with its matching rule.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from broker import lending
from broker.lending import Lender
from broker.queries import load
from broker.session import Session

QUERIES: dict[str, str] = load("broker.results", "queries.sql")
APPLICATION_NAME = "pgjobs-results"
LISTEN_APPLICATION_NAME = "pgjobs-results-listen"

_SHARED: dict[tuple[str, bool], Database] = {}
_SHARED_LOCK = threading.Lock()

#: This process's lenders: one registry for the backend and the transport's publishing.
_LENDERS: dict[str, Lender] = lending.LENDERS


def lend_connections(conninfo: str, lender: Lender | None) -> None:
    """From now on, this process's backend on ``conninfo`` borrows its connections from
    ``lender`` (None: it opens its own again). The lender must reach the same database; the
    backend runs every operation in a transaction of its own on what it borrowed, and gives
    it back with no transaction open."""
    if lender is None:
        _LENDERS.pop(conninfo, None)
    else:
        _LENDERS[conninfo] = lender
        for prepare in (False, True):
            shared(conninfo, prepare).discard()


@atexit.register
def _close_all() -> None:
    """Close this process's connections at exit (a forked child leaves its parent's alone)."""
    with _SHARED_LOCK:
        for database in _SHARED.values():
            database.discard()


def _after_fork_in_child() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()
    for database in _SHARED.values():
        database.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def query(name: str) -> str:
    """The named statement of ``queries.sql``."""
    return QUERIES[name]


def shared(conninfo: str, prepare: bool = False) -> Database:
    """This process's :class:`Database` for ``conninfo``, with prepared statements or not."""
    with _SHARED_LOCK:
        database = _SHARED.get((conninfo, prepare))
        if database is None:
            database = _SHARED[conninfo, prepare] = Database(conninfo, prepare=prepare)
        return database


class Database:
    """One lazily opened autocommit connection, fork-aware and thread-safe; with ``prepare``,
    its statements are prepared on the server (see :class:`broker.session.Session`)."""

    def __init__(self, conninfo: str, connect_timeout: int = 5, prepare: bool = False) -> None:
        self.conninfo = conninfo
        self._session = Session(conninfo, prepare, connect_timeout=connect_timeout,
                                application_name=APPLICATION_NAME)
        self._lock = threading.RLock()
        self._borrowed: psycopg.Connection | None = None

    def after_fork(self) -> None:
        """In a forked child: what another thread of the parent held is nobody's now."""
        self._lock = threading.RLock()
        self._borrowed = None

    def connect(self) -> psycopg.Connection:
        """The open connection, (re)opened if needed. Call with the lock held."""
        return self._session.get()

    def discard(self) -> None:
        """Drop the connection (a fresh one is opened on next use)."""
        self._session.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """The connection for one operation: that of the operation it is nested in, a
        borrowed one, or this process's own."""
        with self._lock:
            lender = lending.lender_for(self.conninfo)
            if self._borrowed is not None or lender is None:
                yield self._borrowed or self.connect()
                return
            with lender() as conn:
                self._borrowed = conn
                try:
                    yield conn
                finally:
                    self._borrowed = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """The connection inside a transaction (a savepoint when one is already open)."""
        with self._connection() as conn, conn.transaction():
            yield conn

    def execute(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a named statement on its own; its rows (none for a statement without)."""
        with self._connection() as conn, lending.committed(conn):
            cursor = conn.execute(query(name), params)
            return cursor.fetchall() if cursor.description else []


def run(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> psycopg.Cursor:
    """Run a named statement on ``conn`` (inside a :meth:`Database.transaction`)."""
    return conn.execute(query(name), params)
