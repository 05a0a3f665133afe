"""Transactional enqueue: publish through the caller's own database transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_OUTER: ContextVar[Any] = ContextVar("pgjobs_broker_outer_connection", default=None)


@contextmanager
def in_transaction(conn: Any) -> Iterator[None]:
    """Publish every message sent by this thread inside the block through ``conn``.

    ``conn`` is a SQLAlchemy ``Connection`` or ``Session``, or a DB-API connection (psycopg 3
    or 2) on the broker's database. The transport INSERTs through it and never commits: the
    messages, and the NOTIFY that wakes consumers, exist only if the caller commits.

    >>> with session.begin(), in_transaction(session):
    ...     session.add(order)
    ...     send_receipt.delay(order.id)
    """
    token = _OUTER.set(dbapi_connection(conn))
    try:
        yield
    finally:
        _OUTER.reset(token)


def current() -> Any:
    """The DB-API connection of the enclosing :func:`in_transaction`, or None."""
    return _OUTER.get()


def dbapi_connection(conn: Any) -> Any:
    """Unwrap a SQLAlchemy ``Session`` or ``Connection`` to its DB-API connection."""
    try:
        from sqlalchemy.engine import Connection
        from sqlalchemy.orm import Session
    except ImportError:  # SQLAlchemy is optional for the broker
        return conn
    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, Connection):
        return conn.connection.dbapi_connection
    return conn
