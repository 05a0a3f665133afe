"""Transactional enqueue: messages published inside ``in_transaction`` share the caller's fate."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from broker_helpers import FAST_OPTIONS, PG_TRANSPORT, sql
from celery import Celery
from kombu import Connection, Queue
from sqlalchemy.orm import Session

from broker import in_transaction
from broker.messages import wake_channel


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


@pytest.fixture
def conn(db_url: str) -> Iterator[Connection]:
    conn = Connection(db_url, transport=PG_TRANSPORT, transport_options=FAST_OPTIONS)
    Queue("outbox")(conn.default_channel).declare()
    yield conn
    conn.release()


@pytest.fixture
def listener(db_url: str) -> Iterator[psycopg.Connection]:
    """A plain LISTEN on the queue's wake-up channel, to see when NOTIFY is delivered."""
    with psycopg.connect(db_url, autocommit=True) as listening:
        listening.execute(f'LISTEN "{wake_channel("outbox")}"')
        yield listening


def notified(listening: psycopg.Connection) -> bool:
    return any(True for _ in listening.notifies(timeout=0.5, stop_after=1))


def count(db_url: str) -> int:
    return sql(db_url, "SELECT count(*) FROM pgjobs_broker_message WHERE queue = 'outbox'")[0][0]


def test_a_message_published_in_a_committed_session_is_stored_and_wakes_consumers_on_commit(
        db_url: str, engine: sa.Engine, conn: Connection, listener: psycopg.Connection) -> None:
    # given a SQLAlchemy session in a transaction
    with Session(engine) as session, session.begin():
        session.execute(sa.text("CREATE TABLE orders (id int)"))
        # when a message is published through it, next to the caller's own write
        with in_transaction(session):
            conn.Producer().publish({"order": 1}, routing_key="outbox")
        # then, before commit, nobody else sees the message or hears about it
        assert count(db_url) == 0
        assert not notified(listener)
    # and after commit both the message and the wake-up are there
    assert count(db_url) == 1
    assert notified(listener)
    assert Queue("outbox")(conn.default_channel).get().payload == {"order": 1}


def test_a_message_published_in_a_rolled_back_session_never_exists(
        db_url: str, engine: sa.Engine, conn: Connection, listener: psycopg.Connection) -> None:
    # given a session whose transaction will roll back
    with Session(engine) as session:
        with session.begin():
            with in_transaction(session):
                conn.Producer().publish({"order": 1}, routing_key="outbox")
            session.rollback()
    # then no message is stored and no consumer was woken
    assert count(db_url) == 0
    assert not notified(listener)


def test_a_sqlalchemy_connection_works_as_the_transaction_too(
        db_url: str, engine: sa.Engine, conn: Connection) -> None:
    # given a SQLAlchemy Connection whose transaction fails after publishing
    with pytest.raises(RuntimeError), engine.begin() as sa_conn:
        with in_transaction(sa_conn):
            conn.Producer().publish({"order": 3}, routing_key="outbox")
        # the message is there inside the transaction, and only there
        inside = "SELECT count(*) FROM pgjobs_broker_message WHERE queue = 'outbox'"
        assert sa_conn.execute(sa.text(inside)).scalar() == 1
        assert count(db_url) == 0
        raise RuntimeError("the caller's work failed")
    # then the message went with it
    assert count(db_url) == 0


def test_celery_apply_async_inside_a_psycopg_transaction_follows_it(db_url: str) -> None:
    # given a Celery app on this transport and a plain psycopg connection
    app = Celery("transactional", broker=db_url, set_as_current=False)
    app.conf.update(broker_transport=PG_TRANSPORT, broker_transport_options=FAST_OPTIONS)
    try:
        with psycopg.connect(db_url) as caller:
            # when one task is sent in a rolled-back transaction and one in a committed one
            with in_transaction(caller):
                app.send_task("pgjobs.lost", queue="outbox")
            caller.rollback()
            with in_transaction(caller):
                app.send_task("pgjobs.kept", queue="outbox")
            caller.commit()
        # then only the committed one is queued
        assert count(db_url) == 1
        with app.connection_for_read() as conn:
            message = Queue("outbox")(conn.default_channel).get()
        assert message.headers["task"] == "pgjobs.kept"
    finally:
        app.pool.force_close_all()  # Celery's close() drops pooled connections without closing
        app.close()


def test_publishing_outside_the_block_goes_straight_to_the_broker(
        db_url: str, engine: sa.Engine, conn: Connection) -> None:
    with Session(engine) as session, session.begin():
        with in_transaction(session):
            pass
        conn.Producer().publish({"order": 2}, routing_key="outbox")
        assert count(db_url) == 1
