"""Wake-ups without polling: NOTIFY only reaches consumers that may be waiting, every waiting
consumer is still woken (also one that stops being busy while a publish commits), and delayed
messages are promoted when they fall due, with polling an hour away."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from broker_helpers import Connect, publish, sql
from kombu import Connection, Consumer, Exchange, Queue
from kombu.message import Message
from psycopg import sql as pgsql

from broker.messages import wake_channel
from broker.queries import query
from broker.store import Store, row

# Polling an hour away, the safety net half an hour: only a notification, or a promotion timed
# by the database, can deliver anything within these tests' deadlines.
ONLY_WAKEUPS = {"polling_interval": 3600, "fault_timeout": 600}
DEADLINE = 15.0


def drain_until(conn: Connection, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass


def busy_on(db_url: str, conn: Connection) -> list[str]:
    """The queues ``conn``'s consumer is busy on, as the database records it."""
    [(busy,)] = sql(db_url, "SELECT busy FROM pgjobs_broker_consumer WHERE id = %(id)s",
                    {"id": conn.transport.consumer_id})
    return busy


@pytest.fixture
def ears(db_url: str) -> Iterator[Callable[[str], psycopg.Connection]]:
    """LISTEN connections of the test's own on a queue's wake-up channel."""
    opened: list[psycopg.Connection] = []

    def listen(queue: str) -> psycopg.Connection:
        conn = psycopg.connect(db_url, autocommit=True)
        opened.append(conn)
        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(wake_channel(queue))))
        return conn

    yield listen
    for conn in opened:
        conn.close()


def heard(conn: psycopg.Connection, quiet: float = 1.0) -> list[str]:
    """Payloads of the notifications ``conn`` receives until ``quiet`` seconds pass without
    one (a notification arrives when the publish commits, long before that)."""
    return [note.payload for note in conn.notifies(timeout=quiet)]


class Received:
    """A consumer callback that keeps the messages, unacknowledged until ``auto_ack``."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.auto_ack = False

    def __call__(self, body: Any, message: Message) -> None:
        self.messages.append(message)
        if self.auto_ack:
            message.ack()

    def bodies(self) -> list[Any]:
        return [message.payload for message in self.messages]

    def ack_all(self) -> None:
        for message in self.messages:
            if not message.acknowledged:
                message.ack()


def test_a_publish_to_a_queue_whose_consumer_is_busy_notifies_nobody(
        connect: Connect, db_url: str, ears: Callable[[str], psycopg.Connection]) -> None:
    # given a consumer holding a full prefetch window, with a backlog behind it
    consumer, producer = connect(**ONLY_WAKEUPS), connect()
    queue = Queue("busy")
    for n in range(4):
        publish(producer, queue, {"n": n})
    received = Received()
    with Consumer(consumer, [queue], callbacks=[received], prefetch_count=2):
        drain_until(consumer, lambda: len(received.messages) == 2, "the first window")
        assert busy_on(db_url, consumer) == ["busy"]
        ear = ears("busy")
        # when another message is published there
        publish(producer, queue, {"n": 4})
        # then no notification is sent: the consumer comes back to the queue by itself
        assert heard(ear) == []
        # and when it has worked through the queue and waits for more
        received.auto_ack = True
        received.ack_all()
        drain_until(consumer, lambda: len(received.messages) == 5, "the rest of the queue")
        drain_until(consumer, lambda: busy_on(db_url, consumer) == [], "the consumer to wait")
        # then the next publish does notify, and wakes it
        publish(producer, queue, {"n": 5})
        assert heard(ear) == [""]
        drain_until(consumer, lambda: len(received.messages) == 6, "the woken delivery")
    assert sorted(body["n"] for body in received.bodies()) == list(range(6))


def test_a_consumer_that_worked_through_a_backlog_is_woken_by_the_next_publish(
        connect: Connect, db_url: str) -> None:
    # given a consumer (prefetch 2) that was busy on a backlog of five, acknowledging each
    consumer, producer = connect(**ONLY_WAKEUPS), connect()
    queue = Queue("drained")
    for n in range(5):
        publish(producer, queue, {"n": n})
    bodies: list[Any] = []

    def on_message(body: Any, message: Message) -> None:
        bodies.append(body)
        message.ack()

    with Consumer(consumer, [queue], callbacks=[on_message], prefetch_count=2):
        drain_until(consumer, lambda: len(bodies) == 5, "the backlog")
        # when it found the queue empty, and one more message is published
        drain_until(consumer, lambda: busy_on(db_url, consumer) == [], "the consumer to wait")
        publish(producer, queue, {"n": 5})
        # then the notification wakes it (polling is an hour away)
        drain_until(consumer, lambda: len(bodies) == 6, "the woken delivery")
    # and each message arrived once
    assert sorted(body["n"] for body in bodies) == list(range(6))


@pytest.mark.parametrize("exchange", ["", "race-direct"])
def test_a_consumer_that_starts_waiting_while_a_publish_commits_still_gets_the_message(
        connect: Connect, db_url: str, ears: Callable[[str], psycopg.Connection],
        exchange: str) -> None:
    # given a consumer busy on a queue (reached through the default exchange, or bound to
    # another: each is published by a statement of its own)
    conn = connect(**ONLY_WAKEUPS)
    queue = Queue("race", Exchange(exchange), routing_key="race")
    queue(conn.default_channel).declare()
    transport = conn.transport
    transport.start_consuming("race")
    publish(conn, queue, {"n": 0})
    consumer = transport.consumer_id
    assert len(transport.claim(["race"], 1, busy=["race"])) == 1
    assert busy_on(db_url, conn) == ["race"]
    ear = ears("race")
    # and a publish that has read that the consumer is busy, and not committed yet
    publisher = psycopg.connect(db_url)
    params = {**row(exchange, "race", {"properties": {}, "body": "1"}, 2.0)._asdict(),
              "always": False}
    publisher.execute(query("publish" if exchange else "publish_direct"), params)
    # when the consumer finds the queue empty and starts waiting, on a session of its own
    claimed: list[Any] = []
    store = Store(db_url)
    waiter = threading.Thread(target=lambda: claimed.extend(
        store.claim(consumer, ["race"], 10, waking=["race"])))
    waiter.start()
    # then it waits for that publish to commit ...
    try:
        wait_for_lock_wait(db_url)
    finally:
        publisher.commit()
        waiter.join(DEADLINE)
        publisher.close()
        store.close()
    # ... and its look at the queue finds the message, which notified nobody
    assert [item.payload for item in claimed] == ['{"properties":{},"body":"1"}']
    assert heard(ear) == []
    assert busy_on(db_url, conn) == []


def wait_for_lock_wait(db_url: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not sql(db_url, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                          "AND wait_event = 'advisory'"):
        assert time.monotonic() < deadline, "the waiting consumer never waited for the lock"
        time.sleep(0.05)


def publish_eta(conn: Connection, queue: Queue, seconds: float) -> datetime:
    eta = datetime.now(UTC) + timedelta(seconds=seconds)
    publish(conn, queue, {"eta": eta.isoformat()}, headers={"eta": eta.isoformat()})
    return eta


LOOKAHEAD = 0.2


def promotion_planned(conn: Connection) -> bool:
    """Whether ``conn``'s consumer knows of a delayed message to promote."""
    return conn.transport.schedule.promote_at is not None


def assert_on_time(received: list[tuple[Any, datetime]], eta: datetime) -> None:
    """It arrived once, and not before its look-ahead window opened."""
    bodies = [body for body, _ in received if "eta" in body]
    assert bodies == [{"eta": eta.isoformat()}]
    [at] = [at for body, at in received if "eta" in body]
    assert at >= eta - timedelta(seconds=LOOKAHEAD)


def keep(received: list[tuple[Any, datetime]]) -> Callable[[Any, Message], None]:
    def on_message(body: Any, message: Message) -> None:
        received.append((body, datetime.now(UTC)))
        message.ack()

    return on_message


def test_a_waiting_consumer_promotes_an_eta_message_when_it_falls_due(connect: Connect) -> None:
    # given a consumer waiting on its queue, polling an hour away
    consumer = connect(eta_lookahead=LOOKAHEAD, **ONLY_WAKEUPS)
    producer = connect(eta_lookahead=LOOKAHEAD)
    queue = Queue("eta-waiting")
    queue(producer.default_channel).declare()
    received: list[tuple[Any, datetime]] = []
    with Consumer(consumer, [queue], callbacks=[keep(received)]):
        drain_until(consumer, lambda: not promotion_planned(consumer), "the first promotion")
        # when a message due in a second and a half is published
        eta = publish_eta(producer, queue, 1.5)
        # then it is delivered once it falls due
        drain_until(consumer, lambda: bool(received), "the ETA message")
    assert_on_time(received, eta)


def test_an_eta_message_published_before_the_consumer_started_is_promoted_in_time(
        connect: Connect) -> None:
    # given a message due in a second and a half, and no consumer yet
    consumer = connect(eta_lookahead=LOOKAHEAD, **ONLY_WAKEUPS)
    producer = connect(eta_lookahead=LOOKAHEAD)
    queue = Queue("eta-early")
    eta = publish_eta(producer, queue, 1.5)
    # when a consumer starts
    received: list[tuple[Any, datetime]] = []
    with Consumer(consumer, [queue], callbacks=[keep(received)]):
        drain_until(consumer, lambda: bool(received), "the ETA message")
    # then it learnt when the message falls due, and got it then
    assert_on_time(received, eta)


def test_an_eta_message_published_while_its_consumer_was_busy_is_promoted_in_time(
        connect: Connect, db_url: str, ears: Callable[[str], psycopg.Connection]) -> None:
    # given a consumer (prefetch 1) busy on a backlog of two
    consumer = connect(eta_lookahead=LOOKAHEAD, **ONLY_WAKEUPS)
    producer = connect(eta_lookahead=LOOKAHEAD)
    queue = Queue("eta-busy")
    for n in range(2):
        publish(producer, queue, {"n": n})
    received = Received()
    with Consumer(consumer, [queue], callbacks=[received], prefetch_count=1):
        drain_until(consumer, lambda: len(received.messages) == 1, "the first message")
        assert busy_on(db_url, consumer) == ["eta-busy"]
        assert not promotion_planned(consumer)
        ear = ears("eta-busy")
        # when a message due in two seconds is published meanwhile, which wakes nobody
        eta = publish_eta(producer, queue, 2.0)
        assert heard(ear) == []
        # and the consumer then works through the backlog
        received.ack_all()
        drain_until(consumer, lambda: len(received.messages) == 2, "the second message")
        received.ack_all()
        # then, once waiting, it promotes the ETA message when it falls due
        drain_until(consumer, lambda: len(received.messages) == 3, "the ETA message")
        received.ack_all()
        at = datetime.now(UTC)
    assert received.bodies() == [{"n": 0}, {"n": 1}, {"eta": eta.isoformat()}]
    assert at >= eta - timedelta(seconds=LOOKAHEAD)


def test_a_database_without_the_newest_broker_migration_says_how_to_fix_it(
        db_url: str) -> None:
    from broker.store import SchemaMissing

    sql(db_url, "DROP FUNCTION pgjobs_broker_wake_one(text, text, boolean)")
    with pytest.raises(SchemaMissing, match=r"run `pgjobs migrate` \(Alembic revision 0011\)"):
        Store(db_url).check_schema()
