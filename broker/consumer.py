"""A consumer: the identity that holds leases, and outlives the connections it consumes on.

A consumer is one row of ``pgjobs_broker_consumer``, renewed by its :class:`Heartbeat`; every
message it was handed is leased to it until it acks, rejects or releases the message, or until
its heartbeat stops for ``visibility_timeout``.

Why it outlives a connection: when the connection breaks (PostgreSQL restarted, a proxy reset
the session, the process was paused), the tasks the worker is running keep running. If the
reconnected transport registered a new consumer, the old leases would be given up while their
tasks still run, and those tasks would run twice. So a connection lost to a fault (kombu's
``Connection.collect``, which Celery calls on a connection error) *parks* its consumer with
the channels it delivered on; the next connection of the same process to the same database
*adopts* it:

- the messages still running keep their lease, and their acks go out through the new
  connection (held back while no connection is up);
- the messages delivered but not started are given back: Celery drops them on a reconnect
  (``Consumer.on_close``), so they would otherwise stay leased for good;
- if the leases lapsed meanwhile (the heartbeat was away for ``visibility_timeout``), the
  running messages that nobody took in the meantime are leased back, so they do not run again
  elsewhere; the others belong to their new holders, whose work no ack of ours can delete.

Only a clean close (:meth:`Consumer.retire`) gives every held message back at once.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from contextlib import suppress
from time import monotonic
from typing import TYPE_CHECKING, Any

import psycopg

from broker.heartbeat import Heartbeat
from broker.store import Store

if TYPE_CHECKING:
    from broker.channel import Channel
    from broker.loop import LoopBinding

logger = logging.getLogger(__name__)

Settlement = Callable[[Store], None]


class LeaseExpired(Exception):
    """This consumer's leases may have been handed to others: what it prefetched must not run.
    A connection error, so that Celery drops its prefetched messages and reconnects."""

# Consumers whose connection was lost, waiting for this process's next connection, by
# (process id, database).
_PARKED: dict[tuple[int, str], list[Consumer]] = {}
_PARKED_LOCK = threading.Lock()


class Consumer:
    """One consumer identity; see the module documentation."""

    def __init__(self, database: str, heartbeat_store: Store, visibility_timeout: float,
                 interval: float) -> None:
        self.id = uuid.uuid4()
        self.database = database
        self.hostname = socket.gethostname()
        self.heartbeat = Heartbeat(heartbeat_store, self.id, self.hostname, visibility_timeout,
                                   interval)
        self.store: Store | None = None
        # The event loop of the connection that consumes through ``store``, if it has one.
        self.loop: LoopBinding | None = None
        self._consuming_thread = 0  # the thread that attached it to ``store``
        self.orphans: list[Channel] = []
        self._waiting: list[Settlement] = []
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def attach(self, store: Store, loop: LoopBinding | None = None) -> None:
        """Consume through ``store``'s connection, in ``loop`` if it has one: register (or
        renew) this consumer's row, settle what waited for a connection, and take stock of the
        orphaned deliveries."""
        started = monotonic()
        lapsed = store.beat(self.id, self.hostname, self.heartbeat.visibility_timeout).lapsed
        self._reconcile(store, lapsed or self.heartbeat.lapsed)
        self.heartbeat.lapsed = False
        self.heartbeat.renewed(started)
        self.store = store
        self.loop = loop
        self._consuming_thread = threading.get_ident()
        self.heartbeat.start()
        self.flush()

    def park(self, channels: list[Channel]) -> None:
        """The connection broke: keep the leases (the heartbeat goes on) and wait for the next
        connection of this process to adopt this consumer."""
        self.store = self.loop = None
        self.orphans.extend(channel for channel in channels if channel.holds_messages())
        with _PARKED_LOCK:
            _PARKED.setdefault((os.getpid(), self.database), []).append(self)

    def retire(self) -> None:
        """Leave cleanly: send the outcomes still waiting, stop the heartbeat, give back
        everything still held, end every subscription, delete the row."""
        self.flush()
        self.heartbeat.stop()
        store, self.store, self.loop = self.store, None, None
        if store is not None:
            store.retire(self.id)

    # -- settling the deliveries of lost connections ----------------------------------------

    def settle(self, settlement: Settlement, now: bool = True) -> None:
        """Ack, reject or release a message whose connection was lost: ``now`` if a
        connection is up, else at the next :meth:`flush`. Off the thread that consumes through
        that connection (a threads pool's), that thread flushes at its next turn, which this
        starts in an event loop: only it uses the session (see :meth:`Channel._hand_to_loop`),
        also while a reconnected worker is adopting this consumer before its loop is back."""
        with self._lock:
            self._waiting.append(settlement)
        if not now or self.store is None:
            return
        if threading.get_ident() != self._consuming_thread:
            if self.loop is not None:
                self.loop.wake()
            return
        with suppress(psycopg.Error):  # kept for the next flush
            self.flush()

    def flush(self) -> None:
        """Record the outcomes still waiting, in order. On a failure the rest wait for the
        next flush, and the error is raised."""
        store = self.store
        if store is None or not self._waiting:
            return
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for index, settlement in enumerate(waiting):
            try:
                settlement(store)
            except BaseException:
                with self._lock:
                    self._waiting[:0] = waiting[index:]
                raise
        self.orphans = [channel for channel in self.orphans if channel.holds_messages()]

    def _reconcile(self, store: Store, lapsed: bool) -> None:
        """Give back what the orphaned channels delivered and nobody runs; lease back what
        runs, if the leases lapsed."""
        for channel in self.orphans:
            running = running_deliveries(channel)
            idle = [tag for tag in channel.held_tags() if tag not in running]
            if idle:
                store.release(idle, self.id)
                channel.forget(idle)
                logger.warning("pgjobs broker: gave back %d message(s) delivered before the "
                               "connection was lost and not started", len(idle))
            if lapsed and running:
                kept = store.retake(sorted(running), self.id)
                logger.warning("pgjobs broker: %d of %d running message(s) were still unheld "
                               "after the lease lapsed and were leased back; the others may "
                               "run again elsewhere", kept, len(running))


def adopt_or_create(database: str, create: Callable[[], Consumer]) -> Consumer:
    """The consumer parked by this process's last lost connection to ``database``, if any;
    otherwise a new one from ``create``."""
    with _PARKED_LOCK:
        parked = _PARKED.get((os.getpid(), database))
        if parked:
            return parked.pop(0)
    return create()


def running_deliveries(channel: Any) -> set[int]:
    """Delivery tags of ``channel``'s messages whose task a Celery worker in this process is
    running. Outside a Celery worker nothing counts as running, and every unsettled message
    is given back on reconnect, as kombu's transports do."""
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return set()
    tags = set()
    for request in tuple(state.active_requests):
        message = getattr(request, "message", None)
        if getattr(message, "channel", None) is channel:
            tags.add(message.delivery_tag)
    return tags
