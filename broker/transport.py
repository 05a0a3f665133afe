"""pgjobs' kombu transport: messages, leases, bindings and wake-ups in PostgreSQL.

Selecting it in Celery::

    broker_url = "postgresql://user:pass@host:5432/db"     # or ...?host=/unix/socket/dir
    broker_transport = "broker.transport:Transport"
    broker_transport_options = {"visibility_timeout": 60}

The URL is handed to libpq as is (any libpq URI works). The tables come from Alembic
migration 0002 (``pgjobs migrate``); a database without them is reported as a connection
error naming the fix, and retried.

Features: direct, topic and fanout exchanges stored in the database (so routing, broadcast,
``celery inspect``/``control`` and events work across processes and hosts); priorities
(0..255, HIGHER runs first, as in RabbitMQ; the opposite of kombu's Redis transport);
durable ETA; acks that delete; leases renewed by a per-consumer heartbeat; dead letters;
transactional enqueue (:func:`broker.in_transaction`); LISTEN/NOTIFY wake-ups with polling
as the safety net; Celery's event loop (``implements.asynchronous``).

Transport options (``broker_transport_options``), with defaults:

``visibility_timeout`` (60)
    Seconds after a consumer's last heartbeat before the messages it held go back to their
    queue. A live consumer keeps its messages however long its tasks or ETAs take.
``heartbeat_interval`` (``min(5, visibility_timeout / 4)``)
    Seconds between heartbeats; at most half of ``visibility_timeout``. Each heartbeat is
    one UPDATE per consumer, then a sweep that rescues the messages of consumers whose
    heartbeat expired.
``polling_interval`` (1.0)
    Seconds between safety-net claims when no notification arrives (lost NOTIFY, LISTEN
    connection down, ETA messages becoming due).
``eta_lookahead`` (2.0)
    A message whose Celery ``eta`` lies in the future stays in the table, out of the claim
    index, until ``eta - eta_lookahead``; then a consumer's periodic promotion (every
    ``polling_interval``) makes it claimable, a worker takes it and waits out the rest in
    its timer. Keep it above ``polling_interval`` for ETA tasks to start on time.
``claim_batch_size`` (100)
    Most messages claimed at once by a consumer without a prefetch limit.
``connect_timeout`` (5)
    Seconds to wait for PostgreSQL when (re)connecting.
``max_deliveries`` (None: unlimited)
    A message handed out more than this many times without being acknowledged (its worker
    keeps dying on it, e.g. out of memory) is moved to the dead-letter table instead.
``synchronous_commit`` (None: the server's setting, normally ``on``)
    PostgreSQL's ``synchronous_commit`` for publishing, claiming and acking. ``off`` about
    doubles the publish rate (no WAL flush wait per message) at a price: if the PostgreSQL
    server crashes (not a clean restart), messages published in its last fraction of a second
    are lost, and recent acks are forgotten (those messages run again).

Order of delivery: queues in the order the consumer lists them, then priority, then
publication order. Queue size (``queue_declare``/``_size``) counts the messages waiting in
the queue, delayed ETA ones included, held ones excluded; ``purge`` deletes those.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from time import monotonic
from typing import Any

import psycopg
from kombu.transport import virtual
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from broker.channel import Channel
from broker.heartbeat import Heartbeat
from broker.listener import Listener
from broker.messages import Claimed, wake_channel
from broker.store import SchemaMissing, Store
from broker.urls import redact

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, float] = {
    "visibility_timeout": 60.0,
    "polling_interval": 1.0,
    "eta_lookahead": 2.0,
    "claim_batch_size": 100,
    "connect_timeout": 5.0,
}


SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")


def _session_conninfo(conninfo: str, synchronous_commit: Any) -> str:
    """``conninfo`` with the ``synchronous_commit`` transport option applied, if given."""
    if synchronous_commit is None:
        return conninfo
    value = str(synchronous_commit).lower()
    if value not in SYNCHRONOUS_COMMIT:
        raise ValueError("broker transport option synchronous_commit must be one of "
                         f"{', '.join(SYNCHRONOUS_COMMIT)}, got {synchronous_commit!r}")
    options = conninfo_to_dict(conninfo).get("options") or ""
    return make_conninfo(conninfo, options=f"{options} -c synchronous_commit={value}".strip())


def _options(raw: dict[str, Any]) -> dict[str, float]:
    """The numeric transport options, validated; ValueError names the bad one."""
    options = dict(DEFAULTS)
    for name in (*DEFAULTS, "heartbeat_interval", "max_deliveries"):
        value = raw.get(name)
        if value is None:
            continue
        try:
            options[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"broker transport option {name} must be a number, "
                             f"got {value!r}") from None
        if options[name] <= 0:
            raise ValueError(f"broker transport option {name} must be positive, got {value!r}")
    options.setdefault("heartbeat_interval", min(5.0, options["visibility_timeout"] / 4))
    if options["heartbeat_interval"] * 2 > options["visibility_timeout"]:
        # A lease must survive a late or failed heartbeat, or live consumers are rescued
        # and their messages run twice.
        raise ValueError("broker transport option heartbeat_interval must be at most half of "
                         f"visibility_timeout, got {options['heartbeat_interval']:g} and "
                         f"{options['visibility_timeout']:g}")
    return options


class Transport(virtual.Transport):
    """kombu transport; one instance per kombu ``Connection``, one consumer row when it
    consumes."""

    Channel = Channel
    can_parse_url = True
    default_port = 5432
    driver_type = "postgresql"
    driver_name = "psycopg"
    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
    )
    connection_errors = virtual.Transport.connection_errors + (
        psycopg.OperationalError, psycopg.InterfaceError, SchemaMissing)
    channel_errors = virtual.Transport.channel_errors + (psycopg.DataError,)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = _options(client.transport_options)
        self.visibility_timeout = options["visibility_timeout"]
        self.polling_interval = options["polling_interval"]
        self.heartbeat_interval = options["heartbeat_interval"]
        self.eta_lookahead = options["eta_lookahead"]
        self.claim_batch_size = int(options["claim_batch_size"])
        self.connect_timeout = options["connect_timeout"]
        self.max_deliveries = int(options["max_deliveries"]) if "max_deliveries" in options \
            else None
        self.conninfo = _conninfo(client)
        self.store = Store(_session_conninfo(
            self.conninfo, client.transport_options.get("synchronous_commit")),
            self.connect_timeout)
        self.listener = Listener(self.conninfo, self.connect_timeout)
        self.consumer_id = uuid.uuid4()
        self.heartbeat: Heartbeat | None = None
        self._loop: Any = None
        self._loop_thread = 0
        self._watched_fd: int | None = None
        self._timers: list[Any] = []
        self._pid = os.getpid()
        self._next_promotion = 0.0

    def driver_version(self) -> str:
        return psycopg.__version__

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        return uri if include_password else redact(uri, mask)

    # -- connection lifecycle -------------------------------------------------------------

    def establish_connection(self) -> Transport:
        try:
            self.store.connect()
            self.store.check_schema()
        except BaseException:
            self.store.close()
            raise
        return super().establish_connection()

    @property
    def forked(self) -> bool:
        """True in a child process that inherited this connection through fork()."""
        return os.getpid() != self._pid

    def close_connection(self, connection: Any) -> None:
        if self.forked:
            # A forked child (e.g. a prefork pool process) closing its parent's connection:
            # the consumer, its leases and its sessions belong to the parent.
            self.listener.close()
            self.store.close()
            return
        self._unwatch()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        try:
            super().close_connection(connection)
            if self.heartbeat is not None:
                self.store.retire(self.consumer_id)
        except psycopg.Error as exc:
            logger.debug("pgjobs broker: closing without clean-up (%s)", exc)
        finally:
            self.heartbeat = None
            self.listener.close()
            self.store.close()

    # -- consumers ------------------------------------------------------------------------

    def start_consuming(self, queue: str) -> None:
        """A channel consumes ``queue``: register this consumer, LISTEN, own an auto-delete
        queue."""
        self._register()
        self.store.own_queue(queue, self.consumer_id)
        self.listener.add(queue)

    def stop_consuming(self, queue: str) -> None:
        if self.forked or any(queue in channel._active_queues for channel in self.channels):
            return
        try:
            self.store.disown_queue(queue, self.consumer_id)
        except psycopg.Error as exc:
            logger.debug("pgjobs broker: could not drop queue %r (%s)", queue, exc)
        self.listener.remove(queue)

    def _register(self) -> None:
        if self.heartbeat is not None:
            return
        hostname = socket.gethostname()
        self.store.beat(self.consumer_id, hostname, self.visibility_timeout)
        self.heartbeat = Heartbeat(Store(self.conninfo, self.connect_timeout), self.consumer_id,
                                   hostname, self.visibility_timeout, self.heartbeat_interval)
        self.heartbeat.start()
        self.listener.ensure()

    def claim(self, queues: Sequence[str], limit: int, now: datetime | None = None,
              acks: Sequence[int] = ()) -> list[Claimed]:
        """Delete ``acks``, then lease up to ``limit`` messages of ``queues`` to this
        consumer."""
        self._register()
        try:
            return self.store.claim(self.consumer_id, queues, limit, now, acks)
        except psycopg.errors.ForeignKeyViolation:
            # Our consumer row was rescued away (heartbeat lapsed): register again and retry.
            self.store.beat(self.consumer_id, socket.gethostname(), self.visibility_timeout)
            return self.store.claim(self.consumer_id, queues, limit, now, acks)

    def batches_acks(self) -> bool:
        """Acks wait for the next loop turn only on the event loop's own thread."""
        return self._loop is not None and threading.get_ident() == self._loop_thread

    # -- synchronous draining (kombu Connection.drain_events) -----------------------------

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what is ready; otherwise wait on the LISTEN socket (at most
        ``polling_interval`` at a time) until something is, or ``timeout`` passes."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            self._maybe_promote()
            if self._deliver_all(force=True):
                return
            remaining = self.polling_interval if deadline is None else deadline - monotonic()
            if remaining <= 0:
                raise TimeoutError()
            self.listener.wait(min(self.polling_interval, remaining))

    def _maybe_promote(self) -> None:
        """At most once per polling interval, let due ETA messages into their queues."""
        if self.heartbeat is None or monotonic() < self._next_promotion:
            return
        self._next_promotion = monotonic() + self.polling_interval
        self.store.promote()

    def _deliver_all(self, force: bool = False) -> int:
        delivered = 0
        batch = self._loop is not None
        for channel in list(self.channels):
            if force or channel.pending:
                delivered += channel.deliver_ready(batch=batch)
            channel.flush_acks()
        return delivered

    def _mark(self, notified: Iterable[str]) -> None:
        notified = set(notified)
        for channel in self.channels:
            if any(wake_channel(queue) in notified for queue in channel._active_queues):
                channel.pending = True

    def _mark_all(self) -> None:
        for channel in self.channels:
            channel.pending = True

    # -- Celery's event loop ----------------------------------------------------------------

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._watch()
        loop.on_tick.add(self._on_tick)
        self._timers.append(loop.call_repeatedly(self.polling_interval, self._on_poll))

    def on_readable(self, fileno: int) -> None:
        self._mark(self.listener.drain())
        self._deliver_all()

    def _on_tick(self) -> None:
        if self.heartbeat is not None and self.listener.ensure():
            self._mark_all()  # notifications sent while it was down are lost
        self._watch()
        self._deliver_all()

    def _on_poll(self) -> None:
        self.listener.ensure()
        self._maybe_promote()
        self._mark_all()
        self._deliver_all()

    def _watch(self) -> None:
        """Keep the loop reading the LISTEN socket, which changes when it reconnects."""
        fd = self.listener.fileno()
        if fd == self._watched_fd or self._loop is None:
            return
        self._forget_fd()
        if fd is not None:
            self._loop.add_reader(fd, self.on_readable, fd)
            self._mark_all()
        self._watched_fd = fd

    def _forget_fd(self) -> None:
        if self._watched_fd is not None:
            try:
                self._loop.remove_reader(self._watched_fd)
            except (OSError, ValueError, KeyError):
                pass
            self._watched_fd = None

    def _unwatch(self) -> None:
        if self._loop is None:
            return
        self._forget_fd()
        self._loop.on_tick.discard(self._on_tick)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._loop = None


def _conninfo(client: Any) -> str:
    """libpq connection string of a kombu client: its URL, or its separate fields."""
    hostname = client.hostname or "localhost"
    if "://" in hostname:
        return hostname
    return make_conninfo(host=hostname, port=client.port or 5432, user=client.userid or None,
                         password=client.password or None, dbname=client.virtual_host or None)
