"""One autocommit psycopg connection of this process, opened on first use.

It is reopened on the next use after it broke (the failing call still raises, so callers'
retry logic sees the error), and it is never closed by a process that inherited it through
``fork()``: closing sends the server a Terminate over the shared socket, which would end the
parent's session too. Such connections are kept in :data:`INHERITED` instead, so they are
not closed by garbage collection either.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

INHERITED: list[psycopg.Connection] = []


class Session:
    """A lazily opened connection for ``conninfo``; ``options`` go to ``psycopg.connect``.
    With ``prepare``, statements run repeatedly are prepared on the server (psycopg's
    default: from their fifth run), so that they are parsed and planned once."""

    def __init__(self, conninfo: str, prepare: bool = False, **options: Any) -> None:
        self.conninfo = conninfo
        # No server-side prepared statements unless asked for: a transaction-pooling
        # PgBouncer hands each transaction to any server connection, where a statement
        # prepared through another client already exists (DuplicatePreparedStatement) or
        # one of ours does not.
        self._options = {"autocommit": True, **options}
        if not prepare:
            self._options["prepare_threshold"] = None
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()

    def get(self) -> psycopg.Connection:
        """The open connection, (re)opened if needed."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and self._pid == os.getpid():
            return conn
        self.close()
        self._conn = psycopg.connect(self.conninfo, **self._options)
        self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        """Close it (or, in a forked child, only let go of it)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pid != os.getpid():
            INHERITED.append(conn)
            return
        try:
            conn.close()
        except psycopg.Error:
            pass
