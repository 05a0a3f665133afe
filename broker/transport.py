"""pgjobs' kombu transport: messages, leases, bindings and wake-ups in PostgreSQL.

Selecting it in Celery::

    broker_url = "postgresql://user@host:5432/db"    # or ...?host=/unix/socket/dir
    broker_password = "pass"                         # or in the URL: user:pass@host
    broker_transport = "broker.transport:Transport"
    broker_transport_options = {"visibility_timeout": 60}

The URL is handed to libpq as is (any libpq URI works), with ``broker_password`` added when
set: Celery shows a broker URL whole in ``inspect stats``, but a password given apart nowhere.
The tables come from Alembic migration 0002 (``pgjobs migrate``); a database without them is
reported as a connection error naming the fix, and retried.

Features: direct, topic and fanout exchanges stored in the database (so routing, broadcast,
``celery inspect``/``control`` and events work across processes and hosts); priorities
(0..255, HIGHER runs first, as in RabbitMQ; the opposite of kombu's Redis transport);
durable ETA; acks that delete; leases renewed by a per-consumer heartbeat; dead letters;
transactional enqueue (:func:`broker.in_transaction`); LISTEN/NOTIFY wake-ups with a safety
net; Celery's event loop (``implements.asynchronous``).

Idle cost. A waiting consumer sends nothing on a fixed period but its heartbeat (one statement
every ``heartbeat_interval``) and the safety net (one query every ``3 * fault_timeout``, on the
LISTEN connection, which it also proves alive); it is woken within milliseconds by NOTIFY,
promotes delayed messages when the first one falls due (the database says when, and a
notification when an earlier one arrives), and rescues a dead consumer's messages when that
one's heartbeat expires. Only while the LISTEN connection is down does it poll, every
``polling_interval``. Publishing notifies only the queues whose consumers may be waiting: a
consumer whose claim filled its prefetch window comes back by itself, and is not woken until
a claim of its finds the queue empty (``broker/schema_wakeups.sql`` says why no wake-up is
lost on the way).

Transport options (``broker_transport_options``), with defaults:

``visibility_timeout`` (60)
    Seconds after a consumer's last heartbeat before the messages it held go back to their
    queue. A live consumer keeps its messages however long its tasks or ETAs take.
``heartbeat_interval`` (``visibility_timeout / 4``)
    Seconds between heartbeats; at most half of ``visibility_timeout``. Each heartbeat is
    one statement per consumer, which also says when the next other consumer's heartbeat
    expires: the messages of that one are rescued then, if it has not renewed it.
``polling_interval`` (1.0)
    Seconds between claims while the LISTEN connection is down (notifications are lost
    then); delayed messages are promoted as often.
``eta_lookahead`` (2.0)
    A message whose Celery ``eta`` lies in the future stays in the table, out of the claim
    index, until ``eta - eta_lookahead``; then a consumer promotes it (at that moment, or
    within ``polling_interval`` while its LISTEN connection is down), a worker takes it and
    waits out the rest in its timer.
``claim_batch_size`` (100)
    Most messages claimed at once by a consumer without a prefetch limit.
``connect_timeout`` (5)
    Seconds to wait for PostgreSQL when (re)connecting.
``fault_timeout`` (10)
    Seconds of silence after which a connection counts as dead: TCP keepalives and
    ``tcp_user_timeout`` on every connection, so a half-open socket (a firewall or NAT that
    dropped the session) fails instead of blocking for the kernel's 15 minutes; also the
    statement timeout of a claim. Every three times as long, the safety net queries the
    LISTEN connection.
``max_deliveries`` (None: unlimited)
    A message handed out more than this many times without being acknowledged (its worker
    keeps dying on it, e.g. out of memory) is moved to the dead-letter table instead.
``direct_url`` (None: the broker URL)
    A URL that reaches PostgreSQL itself, for the LISTEN connection, which needs a session of
    its own. Set it when the broker URL points at a PgBouncer in transaction mode: everything
    else (publishing, claims, acks, heartbeats) goes through the pooler, and no server-side
    prepared statement or other session state is used. Celery shows this option whole in
    ``inspect stats`` and ``inspect conf``: give it without a password, and the password to
    :func:`broker.urls.remember_password` in every process that connects.
``prepared_statements`` (False)
    ``True`` prepares the broker's statements on the server, so that each is parsed and
    planned once per connection instead of at every run: a publish then costs the server
    about a third as much. Only where the broker URL reaches PostgreSQL itself (or a
    session-pooling PgBouncer): through transaction pooling, prepared statements fail.
``synchronous_commit`` (None: the server's setting, normally ``on``)
    PostgreSQL's ``synchronous_commit`` for publishing, claiming and acking. ``off`` raises
    the publish rate (no WAL flush wait per message; 1.2x to 1.4x in ``bench.producers``)
    at a price: if the PostgreSQL server crashes (not a clean restart), messages published
    in its last fraction of a second are lost, and recent acks are forgotten (those messages
    run again). It is sent as a startup parameter, which a PgBouncer refuses; behind one, set
    it on the role instead (``ALTER ROLE ... SET synchronous_commit = off``).

Connections. A transport holds one session for publishing and claiming, one for its
consumer's heartbeat and, while it consumes, one LISTEN connection. In a process that lends
connections (:mod:`broker.lending`; a pgjobs worker's pool child lends the tasks' pool),
publishing and declaring borrow one per operation under the broker URL as given, and open no
session; they then commit with the lent connection's settings (its ``synchronous_commit``, not
the transport option's). A transport that consumes keeps its own sessions for everything.

Faults. A connection lost to a fault (kombu's ``collect``, as Celery does on a connection
error) keeps its consumer and every lease: the tasks still running keep their messages, and
their acks go out once the worker has reconnected; what was delivered but not started is
given back (see :mod:`broker.consumer`). Only a clean close gives back everything at once. A
consumer whose heartbeat was away for nearly ``visibility_timeout`` (a paused process, a
lost network) raises a connection error on its next claim or loop turn, so that Celery
drops its prefetched messages, which others may hold by now, and declares its queues and
bindings again; a claim answered that late (the network stalled, or the process paused, while
it was under way) hands out none of what it claimed. Acks, rejects and releases only ever
touch messages the consumer holds.

Queues: as in AMQP, an auto-delete queue goes (with its messages) when its last consumer
goes, and a queue declared with ``x-expires`` goes once it has had no consumer for that long.

Order of delivery: the queues a consumer lists take turns (each claim starts one queue further
along, and within a claim the queues alternate), so a backlog in one never starves another;
within a queue, priority, then publication order. Queue size (``queue_declare``/``_size``)
counts the messages waiting in the queue, delayed ETA ones included, held ones excluded;
``purge`` deletes those.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from time import monotonic
from typing import Any, NoReturn

import psycopg
from kombu.transport import virtual
from psycopg.conninfo import make_conninfo

from broker import options as transport_options
from broker.channel import Channel
from broker.consumer import Consumer, LeaseExpired, adopt_or_create
from broker.listener import Listener
from broker.loop import LoopBinding
from broker.messages import Claimed, wake_channel
from broker.outage import Outage
from broker.riders import Record
from broker.schedule import Schedule
from broker.store import Promotion, SchemaMissing, Store, fault_budget, first_line
from broker.urls import redact, with_password

logger = logging.getLogger(__name__)


def _session_conninfo(conninfo: str, synchronous_commit: str | None) -> str:
    """``conninfo`` with the ``synchronous_commit`` transport option applied, if given."""
    if synchronous_commit is None:
        return conninfo
    return make_conninfo(conninfo, options=f"-c synchronous_commit={synchronous_commit}")


class Transport(virtual.Transport):
    """kombu transport; one instance per kombu ``Connection``, one consumer when it
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
        psycopg.OperationalError, psycopg.InterfaceError, SchemaMissing, LeaseExpired)
    channel_errors = virtual.Transport.channel_errors + (psycopg.DataError,)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.options = transport_options.parse(client.transport_options)
        self.visibility_timeout = self.options.visibility_timeout
        self.polling_interval = self.options.polling_interval
        self.eta_lookahead = self.options.eta_lookahead
        self.claim_batch_size = self.options.claim_batch_size
        self.max_deliveries = self.options.max_deliveries
        self.conninfo = _conninfo(client)
        budgeted = fault_budget(self.conninfo, self.options.connect_timeout,
                                self.options.fault_timeout)
        self._budgeted = budgeted
        self.store = Store(_session_conninfo(budgeted, self.options.synchronous_commit),
                           self.options.fault_timeout, self.options.prepared_statements)
        # LISTEN needs a session of its own: through a transaction-pooling PgBouncer it would
        # land on whichever server connection the next client gets.
        direct = fault_budget(self.options.direct_url or self.conninfo,
                              self.options.connect_timeout, self.options.fault_timeout)
        self.listener = Listener(direct)
        # Publishing in a process that lends its connections (a worker's pool child) borrows
        # one under the broker URL as given, before the fault budget and synchronous_commit
        # were added (see broker.lending); a store that consumes stops borrowing (_register).
        self.store.borrow_under = self.conninfo
        self.schedule = Schedule(self.polling_interval, 3 * self.options.fault_timeout)
        self.consumer: Consumer | None = None
        self.loop = LoopBinding(self)
        self.outage = Outage()
        self._pid = os.getpid()
        self._lease_warned = False

    def driver_version(self) -> str:
        return psycopg.__version__

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        if not include_password:
            return redact(uri, mask)
        return with_password(uri, self.client.password) if "://" in uri else uri

    @property
    def consumer_id(self) -> Any:
        """This connection's consumer id, once it consumes."""
        return self.consumer.id if self.consumer is not None else None

    # -- connection lifecycle -------------------------------------------------------------

    def establish_connection(self) -> Transport:
        try:
            self.store.check_schema()  # on the store's session, or a borrowed connection
        except BaseException:
            self.store.close()
            raise
        return super().establish_connection()

    @property
    def forked(self) -> bool:
        """True in a child process that inherited this connection through fork()."""
        return os.getpid() != self._pid

    def close_connection(self, connection: Any) -> None:
        """A clean close: every held message goes back at once, the consumer leaves."""
        if self.forked:
            # A forked child (e.g. a prefork pool process) closing its parent's connection:
            # the consumer, its leases and its sessions belong to the parent.
            self._drop_sessions()
            return
        self.loop.unbind()
        try:
            super().close_connection(connection)
            if self.consumer is not None:
                self.consumer.retire()
        except psycopg.Error as exc:
            logger.warning("pgjobs broker: closed without clean-up (%s); the messages it held "
                           "return after visibility_timeout", first_line(exc))
        finally:
            if self.consumer is not None:
                self.consumer.heartbeat.stop()
            self.consumer = None
            self._drop_sessions()

    def _collect(self, connection: Any) -> None:
        """The connection was lost (kombu's ``collect``; Celery's reaction to a connection
        error): drop it without a word to the database, and park the consumer with its leases
        for this process's next connection."""
        if self.forked:
            self._drop_sessions()
            return
        self.loop.unbind()
        channels = list(self.channels)
        for channel in channels:
            channel.orphan(self.consumer)
        self.channels.clear()
        self._avail_channels.clear()
        if self.consumer is not None:
            self.consumer.park(channels)
            held = sum(len(channel.held_tags()) for channel in channels)
            logger.warning("pgjobs broker: connection lost; keeping the leases of %d delivered "
                           "message(s) for the next connection", held)
        self.consumer = None
        self._drop_sessions()

    def _drop_sessions(self) -> None:
        self.listener.close()
        self.store.close()

    # -- consumers ------------------------------------------------------------------------

    def start_consuming(self, queue: str) -> None:
        """A channel consumes ``queue``: register this consumer, subscribe, LISTEN."""
        consumer = self._register()
        self.store.subscribe(queue, consumer.id)
        self.listener.add(queue)

    def stop_consuming(self, queue: str) -> None:
        if self.forked or self.consumer is None or any(
                queue in channel._active_queues for channel in self.channels):
            return
        try:
            self.store.unsubscribe(queue, self.consumer.id)
        except psycopg.Error as exc:
            logger.warning("pgjobs broker: could not unsubscribe from queue %r (%s)", queue,
                           first_line(exc))
        self.listener.remove(queue)

    def _register(self) -> Consumer:
        """This connection's consumer: the one a lost connection of this process left
        behind, or a new one."""
        if self.consumer is None:
            consumer = adopt_or_create(self.conninfo, self._new_consumer)
            # Claims, acks and leases need a session of their own, also where this process
            # lends connections (a solo pool's worker registers a lender in its one process).
            self.store.borrow_under = None
            try:
                consumer.attach(self.store, self.loop)
            except BaseException:
                consumer.park([])  # its leases wait for the next connection, not for nobody
                raise
            self.consumer = consumer
            self._lease_warned = False
            self.listener.ensure()
            self.schedule.promote_in(0)  # learn when the first delayed message falls due
        return self.consumer

    def _new_consumer(self) -> Consumer:
        store = Store(self._budgeted, self.options.fault_timeout,
                      self.options.prepared_statements)
        return Consumer(self.conninfo, store, self.visibility_timeout,
                        self.options.heartbeat_interval)

    def check_lease(self) -> None:
        """Raise :class:`LeaseExpired` (a connection error) when this consumer's leases may be
        gone, so that nothing it prefetched is handed out any more."""
        consumer = self.consumer
        if consumer is None or not consumer.heartbeat.expired():
            return
        self._lease_lapsed()

    def _lease_lapsed(self) -> NoReturn:
        if not self._lease_warned:
            logger.warning("pgjobs broker: no heartbeat for nearly visibility_timeout (%gs): "
                           "this process was paused or cut off; dropping what it prefetched "
                           "and reconnecting", self.visibility_timeout)
            self._lease_warned = True
        raise LeaseExpired("the consumer's leases may have lapsed")

    def claim(self, queues: Sequence[str], limit: int, now: datetime | None = None,
              acks: Sequence[int] = (), busy: Sequence[str] = (),
              waking: Sequence[str] = (), records: Sequence[Record] = ()) -> list[Claimed]:
        """Delete ``acks``, then lease up to ``limit`` messages of ``queues`` to this
        consumer (see :meth:`broker.store.Store.claim` for ``busy``, ``waking`` and
        ``records``)."""
        consumer = self._register()
        self.check_lease()
        try:
            rows = self.store.claim(consumer.id, queues, limit, now, acks, busy, waking,
                                    records)
        except psycopg.errors.ForeignKeyViolation:
            # Our consumer row was rescued away: its leases and subscriptions are gone.
            consumer.heartbeat.lapsed = True
            raise LeaseExpired("the consumer's leases lapsed") from None
        if rows and consumer.heartbeat.expired():
            # The answer came back after the leases may have lapsed (a network stall that the
            # connection survived, a pause of this process): these messages may run elsewhere
            # by now. Hand out none of them; give back, once reconnected, those still ours.
            ids = [row.id for row in rows]
            consumer.settle(lambda store: store.release(ids, consumer.id), now=False)
            self._lease_lapsed()
        if waking:
            # Delayed messages published while it was busy there announced themselves to
            # nobody: ask when the first falls due.
            self.schedule.promote_in(0)
        return rows

    def queues_elsewhere(self, channel: Channel) -> set[str]:
        """The queues that channels of this connection other than ``channel`` consume."""
        return {queue for other in self.channels if other is not channel
                for queue in other._active_queues}

    def batches_acks(self) -> bool:
        """Acks wait for the next loop turn only on the event loop's own thread."""
        return self.loop.on_loop_thread()

    def wake(self) -> None:
        """Let the event loop claim again at once (a prefetch window freed up)."""
        self.loop.wake()

    # -- synchronous draining (kombu Connection.drain_events) -----------------------------

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what is ready; otherwise wait on the LISTEN socket until a notification
        or the schedule says something is, or ``timeout`` passes."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            self.run_due()
            if self.deliver_all():
                return
            wait = self._wait_before(deadline)
            if wait is None:
                raise TimeoutError()
            self.mark(self.listener.wait(wait))

    def _wait_before(self, deadline: float | None) -> float | None:
        """Seconds to wait for a notification: until the next timed action or ``deadline``;
        None once ``deadline`` has passed."""
        now = monotonic()
        until = self.next_action_at()
        if until is None:
            until = now + self.polling_interval
        if deadline is not None:
            if deadline <= now:
                return None
            until = min(until, deadline)
        return max(0.0, until - now)

    # -- what happens without a notification (broker.schedule) ---------------------------

    def next_action_at(self) -> float | None:
        """When the next timed action is due (monotonic); None while not consuming."""
        if self.consumer is None:
            return None
        moments = [self.schedule.next_at(self.listener.connected)]
        moments += [at for channel in self.channels if (at := channel.acks_due_at()) is not None]
        return min(moments)

    def run_due(self) -> None:
        """Run the timed actions that are due: the safety net (LISTEN up) or a poll (LISTEN
        down), and the promotion of delayed messages."""
        if self.consumer is None:
            return
        now = monotonic()
        if self.listener.connected:
            if self.schedule.probe_due(now):
                self.probe(now)
        elif self.schedule.poll_due(now):
            self.schedule.polled(now)
            self.mark_all()
            self.schedule.promote_in(0)  # no notification says when delayed ones fall due
        if self.schedule.promotion_due(now):
            self.promote()

    def promote(self) -> None:
        """Let the delayed messages that are due into their queues; time the next
        promotion (after ``polling_interval`` if the database cannot be reached)."""
        done: Promotion | None = None
        if self.outage.ready():
            with self.outage.survive():
                done = self.store.promote_timed()
        self.schedule.promote_in(self.polling_interval if done is None else done.next_due_in)

    def probe(self, now: float) -> None:
        """The safety net, on the LISTEN connection: mark the channels whose queues have
        ready messages, and learn when the first delayed message falls due."""
        self.schedule.probed(now)
        queues = sorted({queue for channel in self.channels
                         for queue in channel._active_queues})
        found = self.listener.ask("probe", {"queues": queues})
        if found is None:
            return  # the listener is down: polling takes over until it is back
        ready, next_due_in = found
        self.schedule.promote_in(next_due_in)
        self.mark({wake_channel(queue) for queue in ready} | self.listener.drain())

    def deliver_all(self, force: bool = False) -> int:
        """Claim and deliver for every channel with work; then record what waits to be."""
        delivered = 0
        batch = self.loop.bound
        for channel in list(self.channels):
            if force or channel.pending:
                delivered += channel.deliver_ready(batch=batch)
            if self.outage.ready():
                with self.outage.survive():
                    channel.flush_acks(hold=True)
        if self.consumer is not None and self.outage.ready():
            with self.outage.survive():
                self.consumer.flush()
        return delivered

    def mark(self, notified: Iterable[str]) -> None:
        """Channels consuming a queue notified in ``notified`` claim at the next chance;
        delayed messages announced meanwhile are timed for promotion."""
        self.schedule.promote_by(self.listener.take_due())
        notified = set(notified)
        for channel in self.channels:
            if any(wake_channel(queue) in notified for queue in channel._active_queues):
                channel.pending = True

    def mark_all(self) -> None:
        for channel in self.channels:
            channel.pending = True

    # -- Celery's event loop ----------------------------------------------------------------

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Consume inside Celery's event loop (a worker, not a client such as ``inspect``)."""
        self.loop.bind(loop)
        with self.outage.survive():
            _warn_once_if_unvacuumed(self.store)


_VACUUM_CHECKED: set[int] = set()


def _warn_once_if_unvacuumed(store: Store) -> None:
    """One warning per process when the queue tables will not be vacuumed: every claim and
    ack leaves a dead row, and claims slow down as they pile up."""
    if os.getpid() in _VACUUM_CHECKED:
        return
    _VACUUM_CHECKED.add(os.getpid())
    reason = store.autovacuum_off()
    if reason:
        logger.warning("pgjobs broker: %s; the queue tables fill with dead rows and claims slow "
                       "down unless something else vacuums them", reason)


def _conninfo(client: Any) -> str:
    """libpq connection string of a kombu client: its URL, with the password given apart
    (Celery's ``broker_password``) if any, or its separate fields."""
    hostname = client.hostname or "localhost"
    if "://" in hostname:
        return with_password(hostname, client.password or None)
    return make_conninfo(host=hostname, port=client.port or 5432, user=client.userid or None,
                         password=client.password or None, dbname=client.virtual_host or None)
