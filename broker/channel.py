"""The kombu channel: queues, exchanges and bindings in PostgreSQL; claims, leases and acks.

Each method maps one AMQP operation onto one named query of :mod:`broker.store`.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable
from queue import Empty
from time import monotonic
from typing import TYPE_CHECKING, Any

import psycopg
from kombu.exceptions import ChannelError
from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments

from broker import riders
from broker.messages import Claimed, MalformedMessage, decode
from broker.riders import Record
from broker.store import Store, first_line

if TYPE_CHECKING:
    from broker.consumer import Consumer
    from broker.transport import Transport

logger = logging.getLogger(__name__)

REJECTED = "rejected by its consumer without requeue"

# While a claim is expected soon (the last one filled the window), the acks of a loop turn
# wait for it, so that a backlog costs one round trip per claim instead of one more per turn;
# never longer than this, since an ack not yet recorded means a rerun if the worker dies.
ACK_HOLD = 0.05


class QoS(virtual.QoS):
    """Prefetch accounting in memory; leases, acks and requeues in the table.

    Ack deletes the row; ``reject(requeue=True)`` and a clean channel close release the lease
    (the same row goes back, no copy is published); ``reject(requeue=False)`` moves the row to
    the dead-letter table. A channel whose connection was lost releases nothing: its consumer
    keeps the leases (see :mod:`broker.consumer`).
    """

    channel: Channel

    def ack(self, delivery_tag: int) -> None:
        self.channel.ack([delivery_tag])
        self._quick_ack(delivery_tag)

    def reject(self, delivery_tag: int, requeue: bool = False) -> None:
        self.channel.reject(delivery_tag, requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        """Release every message this channel still holds, in one statement."""
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        if tags:
            try:
                self.channel.release(tags)
            except psycopg.Error as exc:
                logger.warning("pgjobs broker: could not release %d message(s) (%s); they "
                               "return after visibility_timeout", len(tags), first_line(exc))
        return []


class Channel(virtual.Channel):
    """A kombu virtual channel backed by :class:`broker.store.Store`."""

    QoS = QoS
    supports_fanout = True
    connection: Transport

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.store = connection.store
        self.pending = True
        self._turn = 0
        self._no_ack_queues: set[str] = set()
        self._acks: list[int] = []
        self._acks_since = 0.0
        # Outcomes recorded on other threads (a threads pool's), for the loop's thread to send.
        self._handed: deque[Callable[[], None]] = deque()
        self._handing_closed = False  # closing: the loop runs no more of them
        # What pool children handed over for the messages of those acks (broker.riders).
        self._records: list[Record] = []
        # Queues this channel's consumer is busy on (publishing there wakes nobody), and
        # whether the next claim must first say it waits for them again.
        self._busy: set[str] = set()
        self._waking = False
        # After the connection was lost: the consumer that keeps this channel's leases.
        self._orphaned = False
        self._adopter: Consumer | None = None
        self._closed_consumer: uuid.UUID | None = None

    def close(self) -> None:
        if self.connection is not None and self.connection.forked:
            self.do_restore = False  # the messages belong to the parent process's consumer
        else:
            self._flush_before_close()
        if self.connection is not None and self.connection.consumer is not None:
            self._closed_consumer = self.connection.consumer.id
        super().close()

    def _flush_before_close(self) -> None:
        self._take_handed_last()
        if not self._acks:
            return
        try:
            self.flush_acks()
        except psycopg.Error as exc:
            logger.warning("pgjobs broker: %d ack(s) not recorded (%s); those messages "
                           "will be delivered again", len(self._acks), first_line(exc))

    def orphan(self, consumer: Consumer | None) -> None:
        """The connection was lost: close without a word to the database, keeping every lease
        for ``consumer``, through which later acks and rejects now go."""
        self._take_handed_last()
        self._orphaned = True
        self._adopter = consumer
        self._acks, acks = [], self._acks
        self._records, records = [], self._records
        if acks and consumer is not None:
            consumer.settle(lambda store: store.ack(acks, consumer.id, records))
        self.do_restore = False
        super().close()

    def holds_messages(self) -> bool:
        return bool(self.held_tags())

    def held_tags(self) -> list[int]:
        """Tags delivered on this channel and not settled yet."""
        qos = self._qos
        if qos is None:
            return []
        return [tag for tag in qos._delivered if tag not in qos._dirty]

    def forget(self, tags: list[int]) -> None:
        """Stop tracking ``tags`` (given back on the channel's behalf)."""
        if self._qos is not None:
            for tag in tags:
                self._qos._delivered.pop(tag, None)

    # -- acks -----------------------------------------------------------------------------

    def ack(self, tags: list[int]) -> None:
        """Delete delivered messages. In Celery's event loop the deletes wait for the end of
        the loop turn, or for the next claim if one is due soon (:meth:`flush_acks`), and go
        in its round trip. What pool children handed over for these messages goes with them."""
        records = riders.take(tags)
        if self._hand_to_loop(lambda: self._hold_acks(tags, records)):
            return
        if self.connection is not None and self.connection.batches_acks():
            self._hold_acks(tags, records)
        else:
            self._settle(_carrying(Store.ack, records), tags)
        if self.pending and self.connection is not None:
            self.connection.wake()  # the window had filled up: claim again now

    def _hold_acks(self, tags: list[int], records: list[Record]) -> None:
        if not self._acks:
            self._acks_since = monotonic()
        self._acks.extend(tags)
        self._records.extend(records)

    def reject(self, tag: int, requeue: bool) -> None:
        """Requeue at once, or move to the dead-letter table."""
        records = riders.take([tag])
        if requeue:
            self._settle(_carrying(Store.release, records), [tag])
        else:
            self._settle(lambda store, tags, consumer: store.dead_letter(
                tags[0], REJECTED, consumer, records), [tag])

    def release(self, tags: list[int]) -> None:
        """Put back the messages among ``tags`` that this channel's consumer still holds."""
        self._settle(_carrying(Store.release, riders.take(tags)), tags)

    # -- outcomes from other threads ---------------------------------------------------------

    def _hand_to_loop(self, call: Callable[[], None]) -> bool:
        """On a thread other than the event loop's (a threads pool acks on its own threads),
        leave ``call`` for the loop's next turn, which it starts at once; False elsewhere, where
        the caller runs it. Only the loop's thread uses the consuming session: psycopg locks a
        statement, not a pipeline, so a statement sent from another thread while a claim's
        pipeline is open would join it and wedge the session."""
        connection = self.connection
        if connection is None or not connection.loop.bound or connection.batches_acks():
            return False
        self._handed.append(call)
        connection.wake()
        if not self._handing_closed:
            return True
        # The channel began closing meanwhile, and its last take_handed may have come and gone.
        try:
            self._handed.remove(call)
        except ValueError:
            return True  # that take_handed ran it
        return False

    def _take_handed_last(self) -> None:
        """The channel is closing: run what was handed over, and have later callers of
        :meth:`_hand_to_loop` run theirs themselves."""
        self._handing_closed = True
        self.take_handed()

    def take_handed(self) -> None:
        """Run, on the loop's thread, what other threads left for it (:meth:`_hand_to_loop`).
        An outcome the database refuses is logged, as it would have been on its own thread,
        rather than stopping the loop."""
        while self._handed:
            try:
                self._handed.popleft()()
            except psycopg.Error as exc:
                logger.error("pgjobs broker: could not record a message's outcome (%s)",
                             first_line(exc))

    def _settle(self, operation: Callable[[Store, list[int], uuid.UUID], None],
                tags: list[int]) -> None:
        """Record the outcome of delivered messages as their holder: on this connection, on
        the connection that adopted this channel's consumer, or after a clean close on a
        short-lived session (the lease is most likely given back by then)."""
        adopter = self._adopter
        if adopter is not None:
            adopter.settle(lambda store: operation(store, tags, adopter.id))
        elif self.connection is not None:
            self._settle_now(operation, tags)
        elif self._closed_consumer is not None:
            self._after_close(operation, tags, self._closed_consumer)

    def _settle_now(self, operation: Callable[[Store, list[int], uuid.UUID], None],
                    tags: list[int]) -> None:
        """On this connection (by the loop's thread: :meth:`_hand_to_loop`), or, while it is
        lost, as soon as it is back."""
        if self._hand_to_loop(lambda: self._settle_now(operation, tags)):
            return
        consumer = self._consumer()
        outage = self.connection.outage
        if outage.ready():
            with outage.survive():
                operation(self.store, tags, consumer.id)
                return
        consumer.settle(lambda store: operation(store, tags, consumer.id), now=False)

    def _consumer(self) -> Consumer:
        consumer = self.connection.consumer
        assert consumer is not None, "a message was delivered without a consumer"
        return consumer

    def _consumer_id(self) -> uuid.UUID:
        return self._consumer().id

    def _after_close(self, operation: Any, *args: Any) -> None:
        try:
            operation(self.store, *args)
        except psycopg.Error as exc:
            logger.debug("pgjobs broker: outcome of a message not recorded (%s)", exc)
        finally:
            self.store.close()

    def flush_acks(self, hold: bool = False) -> None:
        """Send the acks waiting for this loop turn; on failure they stay for the next try,
        or the close, since a lost ack means the task runs again. With ``hold``, acks wait
        up to :data:`ACK_HOLD` for the claim that a full window's last claim promises."""
        self.take_handed()
        due = self.acks_due_at()
        if due is None or (hold and self.pending and monotonic() < due):
            return
        self.store.ack(self._acks, self._consumer_id(), self._records)
        self._acks, self._records = [], []

    def acks_due_at(self) -> float | None:
        """When the acks held for a claim must go on their own (monotonic); None if none."""
        return self._acks_since + ACK_HOLD if self._acks else None

    # -- consuming ------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str,
                      **kwargs: Any) -> Any:
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if no_ack:
            self._no_ack_queues.add(queue)
        self.connection.start_consuming(queue)  # also wakes the consumer for it again
        self._busy.discard(queue)
        self.pending = True
        return result

    def basic_cancel(self, consumer_tag: str) -> None:
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        if self._orphaned:
            return  # the subscription lives on with the consumer
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
            self._busy.discard(queue)
            self.connection.stop_consuming(queue)

    def deliver_ready(self, batch: bool = False) -> int:
        """Claim as many messages as the prefetch window allows and hand them to their
        consumers; returns how many were delivered. With ``batch``, a window that is still
        half full waits until it is half empty, so a backlog is claimed several at a time."""
        queues = self._queues_in_turn()
        if not queues or not self.qos.can_consume():
            return 0
        limit = self.qos.can_consume_max_estimate() or self.connection.claim_batch_size
        if batch and self._window_half_full(limit):
            return 0
        if not self.connection.outage.ready():
            return 0
        self.take_handed()
        acks, self._acks = self._acks, []
        records, self._records = self._records, []
        waking = sorted(self._busy) if self._waking else []
        busy = self._busy_candidates(queues, waking)
        rows = None
        try:
            with self.connection.outage.survive():
                rows = self.connection.claim(queues, limit, acks=acks, busy=busy,
                                             waking=waking, records=records)
        finally:
            if rows is None:  # not recorded: keep them for the next try, or the close
                self._acks[:0] = acks
                self._records[:0] = records
        if rows is None:
            return 0
        self._claimed(len(rows) >= limit, busy, waking)
        return self._hand_over(rows)

    def _busy_candidates(self, queues: list[str], waking: list[str]) -> list[str]:
        """The queues a full claim makes this consumer busy on: those it is not busy on yet,
        and that no other channel of its connection consumes (that one may be waiting)."""
        already = self._busy.difference(waking)
        elsewhere = self.connection.queues_elsewhere(self)
        return [queue for queue in queues if queue not in already and queue not in elsewhere]

    def _claimed(self, full: bool, busy: list[str], waking: list[str]) -> None:
        """Track what the claim told the database. A full claim: busy on ``busy``, and back
        for more at the next chance. Short of full while busy on some queue: the consumer is
        about to wait, so the next claim, at once, first says it waits for them again, then
        looks once more (what was published meanwhile woke nobody)."""
        self._busy.difference_update(waking)
        self._waking = False
        if full:
            self._busy.update(busy)
        elif self._busy:
            self._waking = True
            self.connection.wake()
        self.pending = full or self._waking

    def _queues_in_turn(self) -> list[str]:
        """The consumed queues, starting one further along at each claim, so that a busy
        queue never starves the others (as kombu's other transports rotate)."""
        queues = list(dict.fromkeys(self._active_queues))
        if not queues:
            return queues
        self._turn = (self._turn + 1) % len(queues)
        return queues[self._turn:] + queues[:self._turn]

    def _hand_over(self, rows: list[Claimed]) -> int:
        """Deliver ``rows`` in order; returns how many were delivered. When a callback
        raises, the rows not reached yet go back to their queues: they are in no QoS state, so
        nothing else would release them while this consumer lives."""
        delivered = reached = 0
        try:
            for row in rows:
                reached += 1
                delivered += self._deliver(row)
        finally:
            self._auto_ack([row for row in rows[:reached] if row.queue in self._no_ack_queues])
            if reached < len(rows):
                self._give_back(rows[reached:])
        return delivered

    def _give_back(self, rows: list[Claimed]) -> None:
        try:
            self.release([row.id for row in rows])
        except psycopg.Error as exc:
            logger.warning("pgjobs broker: could not give back %d message(s) (%s); they return "
                           "when this connection closes", len(rows), first_line(exc))

    def _window_half_full(self, free: int) -> bool:
        window = self.qos.prefetch_count
        return bool(window) and free * 2 < window

    def _auto_ack(self, rows: list[Claimed]) -> None:
        """Consumers with ``no_ack`` (e.g. remote control) never ack: their messages are
        deleted once handed over."""
        if rows:
            self.ack([row.id for row in rows])

    def _deliver(self, row: Claimed) -> bool:
        payload = self._decode(row)
        if payload is None:
            return False
        self.connection._deliver(payload, row.queue)
        return True

    def _decode(self, row: Claimed) -> dict[str, Any] | None:
        """The payload to deliver, or None when the row went to the dead-letter table."""
        limit = self.connection.max_deliveries
        if limit is not None and row.deliveries > limit:
            return self._dead(row, f"delivered {row.deliveries} times without an ack "
                                   f"(max_deliveries={limit})")
        try:
            return decode(row)
        except MalformedMessage as exc:
            return self._dead(row, f"malformed: {exc}")

    def _dead(self, row: Claimed, reason: str) -> None:
        logger.error("pgjobs broker: message %d in queue %r moved to pgjobs_broker_dead_letter: "
                     "%s", row.id, row.queue, reason)
        self.store.dead_letter(row.id, reason, self._consumer_id())

    def _get_many(self, queues: list[str], timeout: float | None = None) -> None:
        if not self.deliver_ready():
            raise Empty()

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self.ack([message.delivery_tag])
        return message

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        while True:
            rows = self.connection.claim([queue], 1)
            if not rows:
                raise Empty()
            payload = self._decode(rows[0])
            if payload is not None:
                return payload

    # -- publishing -----------------------------------------------------------------------

    def basic_publish(self, message: dict[str, Any], exchange: str, routing_key: str,
                      **kwargs: Any) -> None:
        self._inplace_augment_message(message, exchange, routing_key)
        self.store.publish(exchange or "", routing_key or "", message,
                           self.connection.eta_lookahead)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.store.publish("", queue, message, self.connection.eta_lookahead)

    # -- queues ---------------------------------------------------------------------------

    def _new_queue(self, queue: str, auto_delete: bool = False, arguments: Any = None,
                   **kwargs: Any) -> None:
        self.store.declare_queue(queue, bool(auto_delete), expires_seconds(arguments))

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        """``Queue(expires=...)`` becomes ``x-expires``, as on AMQP (kombu's virtual channels
        drop it)."""
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.store.queue_exists(queue)

    def _size(self, queue: str) -> int:
        return self.store.size(queue)

    def _purge(self, queue: str) -> int:
        return self.store.purge(queue)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     **kwargs: Any) -> None:
        if if_empty and self._size(queue):
            return
        self.store.delete_queue(queue)

    # -- exchanges and bindings -----------------------------------------------------------

    def exchange_declare(self, exchange: str | None = None, type: str = "direct",
                         durable: bool = False, auto_delete: bool = False,
                         arguments: Any = None, nowait: bool = False,
                         passive: bool = False) -> None:
        type = type or "direct"
        exchange = exchange or f"amq.{type}"
        if passive:
            if self.store.exchange_type(exchange) is None:
                raise ChannelError(f"NOT_FOUND - no exchange {exchange!r}", (50, 10),
                                   "Channel.exchange_declare", "404")
            return
        if type not in self.exchange_types:
            raise ChannelError(f"exchange type {type!r} is not supported; use direct, topic "
                               "or fanout")
        self.store.declare_exchange(exchange, type)

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        nowait: bool = False) -> None:
        self.store.delete_exchange(exchange)

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        return self.exchange_types[self.store.exchange_type(exchange) or default]

    def get_exchanges(self) -> list[str]:
        return self.store.exchanges()

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        return self.store.bindings(exchange)

    def list_bindings(self) -> list[tuple[str, str, str]]:
        return self.store.all_bindings()

    def queue_bind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                   arguments: Any = None, **kwargs: Any) -> None:
        exchange = exchange or "amq.direct"
        routing_key = routing_key or ""
        _, pattern, _ = self.typeof(exchange).prepare_bind(queue, exchange, routing_key,
                                                           arguments)
        self.store.bind(exchange, routing_key, queue, pattern or "")

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                     arguments: Any = None, **kwargs: Any) -> None:
        self.store.unbind(exchange or "amq.direct", routing_key or "", queue)


def _carrying(operation: Callable[..., None],
            records: list[Record]) -> Callable[[Store, list[int], uuid.UUID], None]:
    """``operation`` (:meth:`Store.ack` or :meth:`Store.release`), writing ``records`` in its
    transaction."""
    if not records:
        return operation
    return lambda store, tags, consumer: operation(store, tags, consumer, records)


def expires_seconds(arguments: Any) -> float | None:
    """AMQP's ``x-expires`` (milliseconds) of a queue declaration, in seconds."""
    value = (arguments or {}).get("x-expires") if isinstance(arguments, dict) else None
    try:
        return float(value) / 1000 if value else None
    except (TypeError, ValueError):
        raise ChannelError(f"x-expires must be a number of milliseconds, got {value!r}") from None
