"""The only module that talks to the driver: one method per named query in ``queries.sql``.

A :class:`Store` owns one :class:`broker.session.Session`: an autocommit connection opened
lazily, reopened on the next call after it broke, never closed by a forked child.
Publishing goes through the caller's connection instead while :func:`broker.in_transaction`
is active. A producing store told where to borrow (:attr:`Store.borrow_under`) runs each
operation on a connection lent by its process (:mod:`broker.lending`) when there is a lender,
and then opens none of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.types.array import ListBinaryDumper

from broker import context, lending, riders
from broker.messages import Claimed, encode, priority_of, visible_at
from broker.queries import query
from broker.riders import Record, Statement
from broker.session import Session

logger = logging.getLogger(__name__)

CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
"""What a lost or broken connection raises (and a timeout, a deadlock: the statement may
succeed when tried again)."""
# SQLSTATEs of a session the server ended.
_ENDED = frozenset({"57P01", "57P02", "57P03"})

_T = TypeVar("_T")


class SchemaMissing(Exception):
    """The database has no broker tables, or lacks the newest of their migrations."""


class Beat(NamedTuple):
    """What a heartbeat learnt: whether the consumer's row had gone (its leases lapsed), and
    in how many seconds there will be something to rescue (None: nothing)."""

    lapsed: bool
    consumer_expires_in: float | None
    queue_expires_in: float | None


class Promotion(NamedTuple):
    """What a promotion did: how many delayed messages became ready, and in how many seconds
    the next one falls due (0: more are due now; None: none is delayed)."""

    promoted: int
    next_due_in: float | None


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the session is lost or unusable, rather than that a statement
    failed in it (a timeout, a deadlock, a refused value)."""
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _ENDED


def first_line(exc: BaseException) -> str:
    """A driver error in one log-friendly line (psycopg's messages span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fault_budget(conninfo: str, connect_timeout: float, fault_timeout: float) -> str:
    """``conninfo`` with its fault budget: a connect that takes longer than ``connect_timeout``
    fails, and so does a connection whose peer stays silent for about ``fault_timeout`` seconds,
    idle (TCP keepalives) or not (``tcp_user_timeout``: data sent and never acknowledged), so a
    half-open socket never blocks a claim, or the LISTEN connection, for the kernel's 15 minutes.
    Settings already in ``conninfo`` win."""
    probe = max(1, int(fault_timeout / 4))
    budget = {
        "connect_timeout": max(1, int(connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": 3,
        "tcp_user_timeout": int(fault_timeout * 1000),
    }
    given = conninfo_to_dict(conninfo)
    return make_conninfo(conninfo, **{k: v for k, v in budget.items() if k not in given})


class Store:
    """Broker operations on one database. ``conninfo`` should carry its fault budget
    (:func:`fault_budget`); claims also stop after ``statement_timeout`` seconds. With
    ``prepare``, its statements are prepared on the server (see :class:`Session`)."""

    def __init__(self, conninfo: str, statement_timeout: float = 10.0,
                 prepare: bool = False) -> None:
        self._session = Session(conninfo, prepare, application_name="pgjobs-broker")
        self._claim_timeout = f"{int(statement_timeout * 1000)}ms"
        self._borrowing = lending.Borrowing()
        self._cursors = _Cursors()

    #: The connection string under which this store asks its process for a lender
    #: (:func:`broker.lending.lender_for`) before each operation; None: it always uses its
    #: own session. Only producing stores borrow: claims, leases and heartbeats keep a
    #: dedicated session (:meth:`claim` never borrows).
    borrow_under: str | None = None

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """The open connection, (re)opened if needed."""
        return self._session.get()

    def close(self) -> None:
        self._session.close()

    def autovacuum_off(self) -> str | None:
        """Why the message table will not be vacuumed automatically, or None."""
        return self._one("autovacuum_off", {})[0]

    def check_schema(self) -> None:
        tables, current = self._one("schema_present", {})
        if not tables:
            raise SchemaMissing(
                "the broker tables are missing from this database: run `pgjobs migrate` "
                "(Alembic revision 0002) first")
        if not current:
            raise SchemaMissing(
                "the broker tables in this database predate this pgjobs: run `pgjobs migrate` "
                "(Alembic revision 0011) first")

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """The connection for one operation: a borrowed one (see :attr:`borrow_under`), or
        this store's own session."""
        lender = lending.lender_for(self.borrow_under) if self.borrow_under else None
        if lender is None:
            yield self.connect()
            return
        with self._borrowing.borrow(lender) as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._connection() as conn, conn.transaction():
            yield

    def _execute(self, name: str, params: dict[str, Any]) -> psycopg.Cursor:
        """Run a named statement, committed unless a :meth:`transaction` is open. Its rows
        are on the client once it returns, so a borrowed connection is already given back.
        The cursor is this thread's for that connection: read it before the next call."""
        with self._connection() as conn, lending.committed(conn):
            return self._cursors.on(conn).execute(query(name), params)

    def _one(self, name: str, params: dict[str, Any]) -> tuple[Any, ...]:
        row = self._execute(name, params).fetchone()
        assert row is not None, name
        return row

    # -- consumers and leases -------------------------------------------------------------

    def beat(self, consumer: uuid.UUID, hostname: str, visibility_timeout: float) -> Beat:
        """Register or renew ``consumer``, in one statement that also says when the next
        rescue is due."""
        params = {"consumer": consumer, "hostname": hostname, "pid": os.getpid(),
                  "visibility_timeout": visibility_timeout}
        inserted, consumer_expires_in, queue_expires_in = self._one("consumer_beat", params)
        return Beat(bool(inserted), consumer_expires_in, queue_expires_in)

    def rescue(self, now: datetime | None = None) -> int:
        """Give back the messages of consumers whose heartbeat expired, end their subscriptions,
        forget them; delete the expiring queues unused for too long. Returns how many consumers
        were found dead."""
        with self.transaction():
            dead = [row[0] for row in self._execute("consumer_expired", {"now": now})]
            if dead:
                self._retire(dead)
            self._execute("queue_expire", {"now": now})
        return len(dead)

    def retire(self, consumer: uuid.UUID) -> None:
        """A consumer leaves cleanly: release what it holds, end its subscriptions."""
        with self.transaction():
            self._retire([consumer])

    def _retire(self, consumers: list[uuid.UUID]) -> None:
        self._execute("consumer_release_all", {"consumers": consumers})
        self._unsubscribe(consumers, None)
        self._execute("consumer_delete", {"consumers": consumers})

    def subscribe(self, queue: str, consumer: uuid.UUID) -> None:
        """``consumer`` consumes ``queue``; publishing there wakes it (``consumer_waits``,
        under the queue's lock: see :meth:`claim`'s ``waking``)."""
        with self.transaction():
            self._execute("consumer_waits", {"queues": [queue], "consumer": consumer})
            self._execute("subscribe", {"queue": queue, "consumer": consumer})

    def unsubscribe(self, queue: str, consumer: uuid.UUID) -> None:
        """``consumer`` stops consuming ``queue``; an auto-delete queue left without consumers
        goes, with its messages."""
        with self.transaction():
            self._unsubscribe([consumer], queue)

    def _unsubscribe(self, consumers: list[uuid.UUID], queue: str | None) -> None:
        params = {"consumers": consumers, "queue": queue}
        self._execute("subscriptions_lock", params)
        self._execute("unsubscribe", params)

    def claim(self, consumer: uuid.UUID, queues: Sequence[str], limit: int,
              now: datetime | None = None, acks: Sequence[int] = (),
              busy: Sequence[str] = (), waking: Sequence[str] = (),
              records: Sequence[Record] = ()) -> list[Claimed]:
        """Lease up to ``limit`` visible messages of ``queues`` to ``consumer``, the queues
        taking turns in the order given, each in priority (higher first) then publication
        order; first delete the ``acks``, and write the ``records`` in the same transaction
        (see :meth:`_carrying`). One round trip, bounded by the statement timeout.

        If the claim fills ``limit``, ``consumer`` is busy on ``busy`` from then on (it comes
        back to them by itself: publishing there needs not wake it). ``waking``: queues it
        was busy on and waits for now; it is woken for them again in a transaction of its
        own that commits before the claim looks (see ``consumer_waits``)."""
        params = {"consumer": consumer, "queues": list(queues), "limit": limit, "now": now,
                  "busy": list(busy)}
        return self._carrying(records, lambda statements: self._claim(
            params, acks, waking, statements))

    def _claim(self, params: dict[str, Any], acks: Sequence[int], waking: Sequence[str],
               statements: Sequence[Statement]) -> list[Claimed]:
        consumer = params["consumer"]
        conn = self.connect()
        try:
            # BEGIN and COMMIT as statements, not conn.transaction(): the whole transaction
            # then travels in one round trip, as a claim without a timeout would.
            with conn.pipeline():
                if waking:
                    self._send_transaction(conn, "consumer_waits",
                                           {"queues": list(waking), "consumer": consumer})
                conn.execute(query("begin"))
                conn.execute(query("claim_settings"), {"timeout": self._claim_timeout})
                if acks:
                    conn.execute(query("ack"), {"ids": list(acks), "consumer": consumer})
                claimed = conn.execute(query("claim"), params)
                # Last, so that what they lock is held the shortest time.
                for statement, values in statements:
                    conn.execute(statement, values)
                conn.execute(query("commit"))
        except psycopg.Error:
            self._abandon_transaction(conn)
            raise
        rows = claimed.fetchall()
        rows.sort(key=lambda row: (row[4], row[5]))
        return [Claimed(id=r[0], queue=r[1], deliveries=r[2], payload=r[3]) for r in rows]

    def _send_transaction(self, conn: psycopg.Connection, name: str,
                          params: dict[str, Any]) -> None:
        """Queue ``name`` in a transaction of its own, bounded by the statement timeout, in
        ``conn``'s pipeline."""
        conn.execute(query("begin"))
        conn.execute(query("local_statement_timeout"), {"timeout": self._claim_timeout})
        conn.execute(query(name), params)
        conn.execute(query("commit"))

    @staticmethod
    def _abandon_transaction(conn: psycopg.Connection) -> None:
        """After a failed statement, roll back the transaction it left open (the pipeline
        skipped its COMMIT), so the session is usable again."""
        if conn.closed or conn.info.transaction_status != TransactionStatus.INERROR:
            return
        try:
            conn.execute(query("rollback"))
        except psycopg.Error:
            conn.close()

    def promote(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Make delayed (ETA) messages that are due claimable; returns how many."""
        return self.promote_timed(now, limit).promoted

    def promote_timed(self, now: datetime | None = None, limit: int = 1000) -> Promotion:
        """:meth:`promote`, also saying when the next delayed message falls due."""
        promoted, next_due_in, _ = self._one("promote", {"now": now, "limit": limit})
        return Promotion(int(promoted), next_due_in)

    def ack(self, message_ids: Sequence[int], consumer: uuid.UUID,
            records: Sequence[Record] = ()) -> None:
        """Delete the delivered messages that ``consumer`` still holds, in one transaction
        with the ``records``."""
        self._settle("ack", {"ids": list(message_ids), "consumer": consumer}, records)

    def retake(self, message_ids: Sequence[int], consumer: uuid.UUID) -> int:
        """Lease back to ``consumer`` those of ``message_ids`` that wait unheld; how many."""
        return self._execute("retake", {"ids": list(message_ids), "consumer": consumer}).rowcount

    def release(self, message_ids: Sequence[int], consumer: uuid.UUID,
                records: Sequence[Record] = ()) -> None:
        """Return the messages ``consumer`` still holds among ``message_ids`` to their queues
        at once, in one transaction with the ``records``."""
        self._settle("release", {"ids": list(message_ids), "consumer": consumer}, records)

    def dead_letter(self, message_id: int, reason: str, consumer: uuid.UUID,
                    records: Sequence[Record] = ()) -> None:
        """Move a message ``consumer`` holds to the dead-letter table, with ``reason``, in
        one transaction with the ``records``."""
        self._settle("dead_letter", {"id": message_id, "reason": reason,
                                     "consumer": consumer}, records)

    def _settle(self, name: str, params: dict[str, Any], records: Sequence[Record]) -> None:
        def run(statements: Sequence[Statement]) -> None:
            if not statements:
                self._execute(name, params)
                return
            with self.transaction(), self._connection() as conn:
                conn.execute(query(name), params)
                for statement, values in statements:
                    conn.execute(statement, values)

        self._carrying(records, run)

    def _carrying(self, records: Sequence[Record],
                  run: Callable[[Sequence[Statement]], _T]) -> _T:
        """``run`` a transaction with the statements writing ``records`` (see
        :mod:`broker.riders`) in it. Should it fail for any reason but a lost connection or a
        rescued consumer, a record may be to blame, and must not hold back the messages it
        rides with: each record is written alone (one that fails again is logged and
        dropped), then ``run`` goes again without them."""
        if not records:
            return run(())
        try:
            return run(riders.statements(records))
        except psycopg.Error as exc:
            # The connection, or the consumer's row rescued away: the records are not to
            # blame, and wait with their acks.
            if connection_lost(exc) or isinstance(exc, psycopg.errors.ForeignKeyViolation):
                raise
        for record in records:
            self._write_alone(record)
        return run(())

    def _write_alone(self, record: Record) -> None:
        """Write ``record`` in a transaction of its own, bounded by the statement timeout
        (this runs in the consuming loop); a failure but a lost connection drops it."""
        [(statement, values)] = riders.statements([record])
        try:
            with self.transaction(), self._connection() as conn:
                conn.execute(query("local_statement_timeout"), {"timeout": self._claim_timeout})
                conn.execute(statement, values)
        except psycopg.Error as exc:
            if connection_lost(exc):
                raise
            logger.error("pgjobs broker: could not write %s (%s); it is dropped",
                         riders.describe(record), first_line(exc))

    # -- publishing -------------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, message: dict[str, Any],
                eta_lookahead: float) -> int:
        """Route and insert ``message``; returns the number of queues it reached. Inside
        :func:`broker.in_transaction` the insert goes through the caller's connection."""
        params: dict[str, Any] = row(exchange, routing_key, message, eta_lookahead)._asdict()
        outer = context.current()
        # Inside the caller's transaction every queue is woken: its commit may come much
        # later, and the lock that lets a publish skip waking busy consumers would be held
        # until then.
        params["always"] = outer is not None
        statement = "publish" if exchange else "publish_direct"
        if outer is None:
            return int(self._one(statement, params)[0])
        cursor = outer.cursor()
        try:
            cursor.execute(query(statement), params)
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    def publish_many(self, rows: Sequence[Row], chunk: int = 5000) -> int:
        """Insert ``rows`` (:func:`row`), routed as :meth:`publish` routes, in one
        transaction of a few statements (``chunk`` rows each), and wake each queue given a
        copy once (as :meth:`publish` wakes). Returns the number of copies inserted. Inside
        :func:`broker.in_transaction` it all goes through the caller's connection and
        transaction."""
        batches = (_columns(rows[start:start + chunk]) for start in range(0, len(rows), chunk))
        outer = context.current()
        if outer is None:
            with self._connection() as conn, conn.transaction():
                return _publish_batches(conn, batches, always=False)
        if isinstance(outer, psycopg.Connection):
            return _publish_batches(outer, batches, always=True)
        return _publish_batches_dbapi(outer, batches)

    # -- queues, exchanges, bindings ------------------------------------------------------

    def size(self, queue: str) -> int:
        return int(self._one("size", {"queue": queue})[0])

    def purge(self, queue: str) -> int:
        return int(self._one("purge", {"queue": queue})[0])

    def declare_queue(self, queue: str, auto_delete: bool, expires: float | None) -> None:
        """Declare ``queue``; ``expires`` is AMQP's x-expires, in seconds."""
        self._execute("queue_declare", {"queue": queue, "auto_delete": auto_delete,
                                        "expires": expires})

    def queue_exists(self, queue: str) -> bool:
        return bool(self._one("queue_exists", {"queue": queue})[0])

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


class _Cursors(threading.local):
    """Each thread's cursor on the connection it last ran a statement on. psycopg gives each
    new cursor its own adapters, built again for every statement (a tenth of a publish's
    client CPU); a thread of its own keeps one cursor's rows from another's."""

    conn: psycopg.Connection | None = None
    cursor: psycopg.Cursor | None = None

    def on(self, conn: psycopg.Connection) -> psycopg.Cursor:
        if self.conn is not conn or self.cursor is None:
            self.conn, self.cursor = conn, conn.cursor()
        return self.cursor


class Row(NamedTuple):
    """One message as :meth:`Store.publish_many` writes it."""

    exchange: str
    routing_key: str
    priority: int
    visible_at: datetime | None
    payload: str


def row(exchange: str, routing_key: str, message: dict[str, Any], eta_lookahead: float) -> Row:
    """What ``message``, published to ``exchange`` with ``routing_key``, is stored as."""
    return Row(exchange, routing_key, priority_of(message), visible_at(message, eta_lookahead),
               encode(message))


def _columns(rows: Sequence[Row]) -> dict[str, list[Any]]:
    """The parameters of ``publish_many``: one array per column, one element per message."""
    exchanges, routing_keys, priorities, visible_ats, payloads = zip(*rows, strict=True)
    return {"exchanges": list(exchanges), "routing_keys": list(routing_keys),
            "priorities": list(priorities), "visible_ats": list(visible_ats),
            "payloads": list(payloads)}


class _Wakes:
    """The wake-ups a bulk publish owes, gathered over its batches: each queue given a copy
    visible now, and each given a delayed copy, with the seconds until its first falls due."""

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self.later: dict[str, float] = {}

    def add(self, result: tuple[Any, ...]) -> int:
        """Take one ``publish_many`` result; returns its number of copies."""
        count, ready, later, due_in = result
        self.ready.update(ready)
        for queue, seconds in zip(later, due_in, strict=True):
            self.later[queue] = min(seconds, self.later.get(queue, seconds))
        return int(count)

    def params(self, always: bool) -> dict[str, Any] | None:
        """The parameters of ``wake_queues``, or None when nobody is owed one."""
        wakes = [(queue, "") for queue in sorted(self.ready)]
        wakes += [(queue, f"eta:{seconds}") for queue, seconds in sorted(self.later.items())]
        if not wakes:
            return None
        return {"queues": [queue for queue, _ in wakes],
                "payloads": [payload for _, payload in wakes], "always": always}


def _publish_batches(conn: psycopg.Connection, batches: Iterator[dict[str, list[Any]]],
                     always: bool) -> int:
    """Pipelined: the server inserts one batch while the next one is dumped and sent."""
    with conn.pipeline():
        cursors = [_binary_arrays(conn.cursor()).execute(query("publish_many"), params)
                   for params in batches]
    wakes = _Wakes()
    inserted = sum(wakes.add(cursor.fetchone()) for cursor in cursors)
    params = wakes.params(always)
    if params is not None:
        conn.execute(query("wake_queues"), params)
    return inserted


def _binary_arrays(cursor: psycopg.Cursor) -> psycopg.Cursor:
    """``cursor`` sending arrays in binary: a JSON payload then needs no array escaping, which
    would cost more than everything else of a bulk write."""
    cursor.adapters.register_dumper(list, ListBinaryDumper)
    return cursor


def _publish_batches_dbapi(conn: Any, batches: Iterator[dict[str, list[Any]]]) -> int:
    """The same through any DB-API connection (psycopg 2), one batch after the other, in the
    caller's transaction (so every queue is woken)."""
    wakes, inserted = _Wakes(), 0
    cursor = conn.cursor()
    try:
        for params in batches:
            cursor.execute(query("publish_many"), params)
            inserted += wakes.add(cursor.fetchone())
        wake = wakes.params(always=True)
        if wake is not None:
            cursor.execute(query("wake_queues"), wake)
    finally:
        cursor.close()
    return inserted
