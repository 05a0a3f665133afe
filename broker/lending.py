"""Connections lent to the broker by a process that already holds a pool of them.

A worker's pool child has the tasks' own pooled connections to the database. It registers
their pool as a *lender* (:func:`lend_connections`); from then on the result backend and the
producing side of the transport on that database borrow one of them per operation instead of
opening connections of their own, so the child holds one connection for everything.

Matching rule: a lender is registered under a connection string (pgjobs: DATABASE_URL) and is
lent to whoever asks under the same one, compared as libpq parses them (so a URL and its
``key=value`` spelling match), every parameter equal: another database, host, port, user or
any other setting (a BROKER_URL elsewhere, say) gets no lender and opens its own connection.
Callers ask under the URL they were configured with, before they add settings of their own
(the transport's fault budget and ``synchronous_commit``): what they borrow carries the
lender's settings instead.

A lender hands out a connection with no transaction open, autocommit or not, and takes it
back; the borrower runs each operation in a transaction of its own (:func:`committed`) and
gives it back with none open. A lender's failures are psycopg errors, so that the borrower's
callers (kombu's and Celery's retries) recognise them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

#: Lends a psycopg connection with no transaction open, for one operation, and takes it back.
Lender = Callable[[], AbstractContextManager[psycopg.Connection]]

#: The lenders of this process, by the connection string they were registered under.
LENDERS: dict[str, Lender] = {}


def lend_connections(conninfo: str, lender: Lender | None) -> None:
    """From now on, this process's borrowers on ``conninfo`` (see the matching rule above)
    borrow from ``lender``; None: they open their own connections again."""
    if lender is None:
        LENDERS.pop(conninfo, None)
    else:
        LENDERS[conninfo] = lender


def lender_for(conninfo: str) -> Lender | None:
    """The lender registered under ``conninfo`` or under a string with the same parameters."""
    lender = LENDERS.get(conninfo)
    if lender is not None or not LENDERS:
        return lender
    wanted = _parameters(conninfo)
    for registered, candidate in list(LENDERS.items()):
        if wanted is not None and _parameters(registered) == wanted:
            return candidate
    return None


def _parameters(conninfo: str) -> dict[str, Any] | None:
    try:
        return conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return None


def committed(conn: psycopg.Connection) -> AbstractContextManager[Any]:
    """A transaction around one statement on a borrowed connection outside autocommit (an
    enclosing transaction, or autocommit, already makes it take effect)."""
    if conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        return nullcontext()
    return conn.transaction()


class Borrowing:
    """Connections borrowed for one operation at a time, per thread: an operation nested in
    another (a statement inside :meth:`broker.store.Store.transaction`) gets the connection
    the outer one borrowed."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def borrow(self, lender: Lender) -> Iterator[psycopg.Connection]:
        """The connection of the enclosing operation, or one borrowed from ``lender`` for
        this one and given back, with no transaction open, when it ends."""
        held = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        with lender() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None
                _close_transaction(conn)


def _close_transaction(conn: psycopg.Connection) -> None:
    """Roll back what a failed operation left open, so that the lender gets the connection
    back with no transaction open (a broken one it drops anyway)."""
    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        pass
