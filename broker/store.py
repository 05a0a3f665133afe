"""The only module that talks to the driver: one method per named query in ``queries.sql``.

A :class:`Store` owns one autocommit psycopg connection, opened lazily and reopened on the
next call after it broke (the failing call still raises, so kombu's retry logic sees it).
Publishing goes through the caller's connection instead while :func:`broker.in_transaction`
is active.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from broker import context
from broker.messages import Claimed, encode, priority_of, visible_at
from broker.queries import query

# Connections inherited through fork() must never be closed by the child: closing sends the
# server a Terminate that would end the parent's session too.
INHERITED: list[psycopg.Connection] = []


class SchemaMissing(Exception):
    """The database has no broker tables."""


def first_line(exc: BaseException) -> str:
    """A driver error in one log-friendly line (psycopg's messages span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Store:
    """Broker operations on one database."""

    def __init__(self, conninfo: str, connect_timeout: float = 5.0) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """The open connection, (re)opened if needed."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and self._pid == os.getpid():
            return conn
        self.close()
        self._conn = psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=max(1, int(self._connect_timeout)),
            application_name="pgjobs-broker")
        self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
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

    def check_schema(self) -> None:
        if not self._one("schema_present", {})[0]:
            raise SchemaMissing(
                "the broker tables are missing from this database: run `pgjobs migrate` "
                "(Alembic revision 0002) first")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.connect().transaction():
            yield

    def _execute(self, name: str, params: dict[str, Any]) -> psycopg.Cursor:
        return self.connect().execute(query(name), params)

    def _one(self, name: str, params: dict[str, Any]) -> tuple[Any, ...]:
        row = self._execute(name, params).fetchone()
        assert row is not None, name
        return row

    # -- consumers and leases -------------------------------------------------------------

    def beat(self, consumer: uuid.UUID, hostname: str, visibility_timeout: float) -> bool:
        """Register or renew ``consumer``; True if its row had gone (its leases lapsed)."""
        params = {"consumer": consumer, "hostname": hostname, "pid": os.getpid(),
                  "visibility_timeout": visibility_timeout}
        return bool(self._one("consumer_beat", params)[0])

    def rescue(self, now: datetime | None = None) -> int:
        """Give back the messages of consumers whose heartbeat expired, drop their auto-delete
        queues, forget them. Returns how many consumers were found dead."""
        with self.transaction():
            dead = [row[0] for row in self._execute("consumer_expired", {"now": now})]
            if dead:
                self._retire(dead)
        return len(dead)

    def retire(self, consumer: uuid.UUID) -> None:
        """A consumer leaves cleanly: release what it holds, drop its auto-delete queues."""
        with self.transaction():
            self._retire([consumer])

    def _retire(self, consumers: list[uuid.UUID]) -> None:
        params = {"consumers": consumers}
        self._execute("consumer_release_all", params)
        self._execute("consumer_drop_queues", params)
        self._execute("consumer_delete", params)

    def claim(self, consumer: uuid.UUID, queues: Sequence[str], limit: int,
              now: datetime | None = None, acks: Sequence[int] = ()) -> list[Claimed]:
        """Lease up to ``limit`` visible messages of ``queues`` to ``consumer``, in queue order,
        then priority (higher first), then publication order; first delete the ``acks``, in
        the same round trip."""
        params = {"consumer": consumer, "queues": list(queues), "limit": limit, "now": now}
        conn = self.connect()
        if acks:
            with conn.pipeline():
                conn.execute(query("ack"), {"ids": list(acks)})
                rows = conn.execute(query("claim"), params).fetchall()
        else:
            rows = conn.execute(query("claim"), params).fetchall()
        rows.sort(key=lambda row: (row[4], -row[5], row[0]))
        return [Claimed(id=r[0], queue=r[1], deliveries=r[2], payload=r[3]) for r in rows]

    def promote(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Make delayed (ETA) messages that are due claimable; returns how many."""
        return int(self._one("promote", {"now": now, "limit": limit})[0])

    def ack(self, message_ids: Sequence[int]) -> None:
        """Delete delivered messages."""
        self._execute("ack", {"ids": list(message_ids)})

    def release(self, message_ids: Sequence[int], consumer: uuid.UUID) -> None:
        """Return the messages ``consumer`` still holds among ``message_ids`` to their queues
        at once."""
        self._execute("release", {"ids": list(message_ids), "consumer": consumer})

    def dead_letter(self, message_id: int, reason: str) -> None:
        self._execute("dead_letter", {"id": message_id, "reason": reason})

    # -- publishing -------------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, message: dict[str, Any],
                eta_lookahead: float) -> int:
        """Route and insert ``message``; returns the number of queues it reached. Inside
        :func:`broker.in_transaction` the insert goes through the caller's connection."""
        params = {"exchange": exchange, "routing_key": routing_key,
                  "priority": priority_of(message), "payload": encode(message),
                  "visible_at": visible_at(message, eta_lookahead)}
        outer = context.current()
        if outer is None:
            return int(self._one("publish", params)[0])
        cursor = outer.cursor()
        try:
            cursor.execute(query("publish"), params)
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    # -- queues, exchanges, bindings ------------------------------------------------------

    def size(self, queue: str) -> int:
        return int(self._one("size", {"queue": queue})[0])

    def purge(self, queue: str) -> int:
        return self._execute("purge", {"queue": queue}).rowcount

    def declare_queue(self, queue: str, auto_delete: bool) -> None:
        self._execute("queue_declare", {"queue": queue, "auto_delete": auto_delete})

    def queue_exists(self, queue: str) -> bool:
        return bool(self._one("queue_exists", {"queue": queue})[0])

    def own_queue(self, queue: str, consumer: uuid.UUID) -> None:
        self._execute("queue_own", {"queue": queue, "consumer": consumer})

    def disown_queue(self, queue: str, consumer: uuid.UUID) -> None:
        self._execute("queue_disown", {"queue": queue, "consumer": consumer})

    def delete_queue(self, queue: str) -> None:
        self._execute("queue_delete", {"queue": queue})

    def declare_exchange(self, exchange: str, type_: str) -> None:
        self._execute("exchange_declare", {"exchange": exchange, "type": type_})

    def exchange_type(self, exchange: str) -> str | None:
        row = self._execute("exchange_type", {"exchange": exchange}).fetchone()
        return row[0] if row else None

    def exchanges(self) -> list[str]:
        return [row[0] for row in self._execute("exchange_list", {})]

    def delete_exchange(self, exchange: str) -> None:
        self._execute("exchange_delete", {"exchange": exchange})

    def bind(self, exchange: str, routing_key: str, queue: str, pattern: str) -> None:
        self._execute("bind", {"exchange": exchange, "routing_key": routing_key,
                               "queue": queue, "pattern": pattern})

    def unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        self._execute("unbind", {"exchange": exchange, "routing_key": routing_key,
                                 "queue": queue})

    def bindings(self, exchange: str) -> list[tuple[str, str, str]]:
        """``(routing_key, pattern, queue)`` of every binding of ``exchange``."""
        return [tuple(row) for row in self._execute("bindings_of_exchange",
                                                     {"exchange": exchange})]

    def all_bindings(self) -> list[tuple[str, str, str]]:
        """``(queue, exchange, routing_key)`` of every binding."""
        return [tuple(row) for row in self._execute("bindings_all", {})]
