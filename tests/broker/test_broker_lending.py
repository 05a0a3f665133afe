"""Publishing on a connection lent by the process (a worker's pool child lends the tasks'
pooled connection): the producer opens none of its own; consumers keep their own sessions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import kombu
import psycopg
import pytest
import sqlalchemy as sa
from broker_helpers import FAST_OPTIONS, PG_TRANSPORT, sql
from kombu import Connection, Queue
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from sqlalchemy.orm import Session

from broker import in_transaction, lending


class Lender:
    """Lends one connection outside autocommit (as SQLAlchemy's pool does), counting each
    loan and the state it comes back in."""

    def __init__(self, url: str, **options: Any) -> None:
        self.conn = psycopg.connect(url, application_name="lender", **options)
        self.loans = 0
        self.returned: list[TransactionStatus] = []
        self.failure: Exception | None = None

    @contextmanager
    def __call__(self) -> Iterator[psycopg.Connection]:
        if self.failure is not None:
            raise self.failure
        assert self.conn.info.transaction_status == TransactionStatus.IDLE
        self.loans += 1
        try:
            yield self.conn
        finally:
            self.returned.append(self.conn.info.transaction_status)


@pytest.fixture
def lend(db_url: str) -> Iterator[Any]:
    """Register lenders in this process for the test; all unregistered afterwards."""
    made: list[tuple[str, Lender]] = []

    def register(under: str, **options: Any) -> Lender:
        lender = Lender(db_url, **options)
        lending.lend_connections(under, lender)
        made.append((under, lender))
        return lender

    yield register
    for under, lender in made:
        lending.lend_connections(under, None)
        lender.conn.close()


@pytest.fixture
def producer(db_url: str) -> Iterator[Connection]:
    conn = Connection(db_url, transport=PG_TRANSPORT, transport_options=FAST_OPTIONS)
    yield conn
    conn.release()


def broker_sessions(db_url: str) -> int:
    return sql(db_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND application_name = 'pgjobs-broker'")[0][0]


def messages(db_url: str, queue: str) -> int:
    return sql(db_url, "SELECT count(*) FROM pgjobs_broker_message WHERE queue = %(q)s",
               {"q": queue})[0][0]


def publish(conn: Connection, queue: Queue, count: int) -> None:
    producer = conn.Producer()
    for number in range(count):
        producer.publish({"n": number}, routing_key=queue.name, declare=[queue], retry=False)


def test_a_producer_where_the_process_lends_publishes_on_the_lent_connection_only(
        db_url: str, lend: Any, producer: Connection) -> None:
    # given a lender for the broker's URL
    lender = lend(db_url)
    queue = Queue("lent")
    # when a producer publishes five messages
    publish(producer, queue, 5)
    # then they are stored, through the lender, which got its connection back with no
    # transaction open each time; the producer opened no session of its own
    assert messages(db_url, "lent") == 5
    assert lender.loans >= 5
    assert set(lender.returned) == {TransactionStatus.IDLE}
    assert broker_sessions(db_url) == 0


def test_a_consumer_in_a_process_that_lends_claims_on_its_own_session(
        db_url: str, lend: Any, producer: Connection) -> None:
    # given five messages published on a lent connection
    lender = lend(db_url)
    queue = Queue("lent")
    publish(producer, queue, 5)
    # when a connection of the same process consumes them (its queue declared by then)
    consumer = Connection(db_url, transport=PG_TRANSPORT, transport_options=FAST_OPTIONS)
    received: list[int] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body["n"])
        message.ack()

    try:
        with kombu.Consumer(consumer, [queue], callbacks=[on_message]):
            loans = lender.loans
            deadline = time.monotonic() + 10
            while len(received) < 5 and time.monotonic() < deadline:
                with suppress(TimeoutError):
                    consumer.drain_events(timeout=0.2)
            # then it got each once, claiming and acking on dedicated sessions (its own and
            # its heartbeat's), none of it on the lent connection
            assert sorted(received) == [0, 1, 2, 3, 4]
            assert broker_sessions(db_url) >= 2
            assert lender.loans == loans
    finally:
        consumer.release()
    assert messages(db_url, "lent") == 0


def test_a_lender_registered_under_another_spelling_of_the_url_is_borrowed_from(
        db_url: str, lend: Any, producer: Connection) -> None:
    # given a lender registered under the key=value form of the broker's URL
    lender = lend(make_conninfo(**conninfo_to_dict(db_url)))
    # when a producer on the URL publishes
    publish(producer, Queue("lent"), 1)
    # then it borrowed: the same connection parameters are the same database
    assert messages(db_url, "lent") == 1
    assert lender.loans >= 1
    assert broker_sessions(db_url) == 0


def test_a_lender_for_another_database_is_not_borrowed_from(
        db_url: str, lend: Any, producer: Connection) -> None:
    # given a lender registered only for another database
    lender = lend(make_conninfo(db_url, dbname="postgres"))
    # when a producer on the broker's URL publishes
    publish(producer, Queue("lent"), 1)
    # then it used a session of its own
    assert messages(db_url, "lent") == 1
    assert lender.loans == 0
    assert broker_sessions(db_url) == 1


def test_a_publish_that_fails_on_a_lent_connection_raises_and_leaves_no_transaction_open(
        db_url: str, lend: Any, producer: Connection) -> None:
    # given a declared queue, then a lender whose connection cannot write
    queue = Queue("lent")
    publish(producer, queue, 1)
    lender = lend(db_url, options="-c default_transaction_read_only=on")
    # when a producer publishes
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        publish(producer, queue, 1)
    # then the error reached the caller, and the connection came back usable, with its
    # transaction rolled back
    assert lender.returned[-1] == TransactionStatus.IDLE
    assert lender.conn.execute("SELECT 1").fetchone() == (1,)
    lender.conn.rollback()
    assert messages(db_url, "lent") == 1


def test_a_lender_that_cannot_lend_raises_a_connection_error_for_kombu_to_retry(
        db_url: str, lend: Any, producer: Connection) -> None:
    # given a lender that fails as a pool does when the server is down
    queue = Queue("lent")
    publish(producer, queue, 1)
    lender = lend(db_url)
    lender.failure = psycopg.OperationalError("connection refused")
    # when a producer publishes, the error is one of the transport's connection errors
    with pytest.raises(producer.connection_errors):
        publish(producer, queue, 1)
    assert messages(db_url, "lent") == 1


def test_publishing_inside_in_transaction_uses_the_callers_connection_not_a_lent_one(
        db_url: str, lend: Any, producer: Connection) -> None:
    # given a lender and a declared queue
    lender = lend(db_url)
    queue = Queue("lent")
    publish(producer, queue, 1)
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        # when a message is published inside a caller's transaction that rolls back, then in
        # one that commits
        loans = lender.loans
        for commit in (False, True):
            with Session(engine) as session:
                session.begin()
                with in_transaction(session):
                    producer.Producer().publish({"n": 1}, routing_key="lent", retry=False)
                session.commit() if commit else session.rollback()
        # then only the committed one exists, and neither went through the lender
        assert messages(db_url, "lent") == 2
        assert lender.loans == loans
    finally:
        engine.dispose()
