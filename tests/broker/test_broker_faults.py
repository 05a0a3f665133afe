"""Faults: the LISTEN connection and the working connection dying under the transport."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from broker_helpers import FAST_OPTIONS, PG_TRANSPORT, sql
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from broker.consumer import LeaseExpired
from broker.messages import wake_channel


@pytest.fixture
def conns(db_url: str) -> Iterator[list[Connection]]:
    opened: list[Connection] = []
    yield opened
    for conn in opened:
        conn.release()


def connect(db_url: str, opened: list[Connection], **options: Any) -> Connection:
    conn = Connection(db_url, transport=PG_TRANSPORT, transport_options={**FAST_OPTIONS, **options})
    opened.append(conn)
    conn.connect()
    return conn


def terminate(db_url: str, pid: int) -> None:
    sql(db_url, "SELECT pg_terminate_backend(%(pid)s)", {"pid": pid})


def test_the_listener_reconnects_by_itself_and_hears_notifications_again(
        db_url: str, conns: list[Connection], caplog: pytest.LogCaptureFixture) -> None:
    # given a consumer listening on its queue
    consumer, producer = connect(db_url, conns), connect(db_url, conns)
    queue = Queue("woken")
    queue(producer.default_channel).declare()
    received: list[Any] = []
    with Consumer(consumer, [queue], callbacks=[lambda body, m: received.append(m.ack())]):
        listener = consumer.transport.listener
        first_pid = listener.backend_pid
        # when its LISTEN connection is killed by the server
        terminate(db_url, first_pid)
        producer.Producer().publish({"n": 1}, routing_key="woken")
        # then the message still arrives (polling covers the gap) ...
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            drain(consumer)
        assert len(received) == 1
        # ... the listener comes back on a new connection, having said so once
        while listener.backend_pid in (None, first_pid) and time.monotonic() < deadline:
            drain(consumer)
        assert listener.backend_pid not in (None, first_pid)
        assert caplog.text.count("LISTEN connection lost") == 1
        # ... and notifications reach it again
        producer.Producer().publish({"n": 2}, routing_key="woken")
        heard: set[str] = set()
        while not heard and time.monotonic() < deadline:
            heard = listener.wait(0.5)
        assert wake_channel("woken") in heard


def deliver_one(conn: Connection, name: str) -> Message:
    """Publish one message to a new queue ``name`` and have ``conn`` take it, unacknowledged."""
    queue = Queue(name)
    queue(conn.default_channel).declare()
    conn.Producer().publish({"n": 1}, routing_key=name)
    message = queue(conn.default_channel).get()
    assert message is not None
    return message


def drain(conn: Connection) -> None:
    try:
        conn.drain_events(timeout=0.2)
    except TimeoutError:
        pass


def test_a_producer_reconnects_when_its_connection_dies(
        db_url: str, conns: list[Connection]) -> None:
    # given a producer whose database session is killed
    producer = connect(db_url, conns)
    queue = Queue("survivor")
    queue(producer.default_channel).declare()
    terminate(db_url, producer.transport.store.connect().info.backend_pid)
    # when it publishes with kombu's retry policy
    producer.Producer().publish({"n": 1}, routing_key="survivor", retry=True,
                                retry_policy={"max_retries": 3, "interval_start": 0})
    # then the message is stored
    assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_message") == [(1,)]


def test_a_consumer_connection_error_is_a_kombu_connection_error(
        db_url: str, conns: list[Connection]) -> None:
    # given a consumer whose working session is killed
    consumer = connect(db_url, conns)
    queue = Queue("broken")
    queue(consumer.default_channel).declare()
    consumer.transport.start_consuming("broken")
    terminate(db_url, consumer.transport.store.connect().info.backend_pid)
    # when it claims, the error is one kombu and Celery treat as "reconnect"
    with pytest.raises(consumer.connection_errors):
        consumer.transport.claim(["broken"], 1)
    # and the next claim works on a fresh session
    assert consumer.transport.claim(["broken"], 1) == []


def test_a_forked_child_closing_the_connection_leaves_the_parents_consumer_alone(
        db_url: str, conns: list[Connection]) -> None:
    # given a consumer holding a message, as a worker's main process does before forking
    import os

    parent = connect(db_url, conns)
    deliver_one(parent, "forked")
    # when a forked child closes its inherited copy of the connection and exits
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            parent.release()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    # then the parent still holds its message, and its sessions still work
    held = sql(db_url, "SELECT consumer FROM pgjobs_broker_message")
    assert held == [(parent.transport.consumer_id,)]
    assert parent.transport.claim(["forked"], 1) == []


def test_an_ack_after_a_clean_close_still_deletes_the_message_nobody_took(
        db_url: str, conns: list[Connection]) -> None:
    # given a message delivered on a connection that was then closed cleanly while its task
    # still ran: its lease is released
    conn = connect(db_url, conns)
    message = deliver_one(conn, "late")
    conn.release()
    assert sql(db_url, "SELECT consumer FROM pgjobs_broker_message") == [(None,)]
    # when the task finishes and acknowledges it
    message.ack()
    # then the message is deleted, so it does not run again
    assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_message") == [(0,)]


def test_in_the_event_loop_a_new_listen_connection_is_watched_after_a_reconnect(
        db_url: str, conns: list[Connection]) -> None:
    # given a consumer on kombu's event loop, polling far away: only NOTIFY can wake it
    from kombu.asynchronous import Hub

    consumer, producer = connect(db_url, conns, polling_interval=30), connect(db_url, conns)
    queue = Queue("looped-again")
    queue(producer.default_channel).declare()
    hub = Hub()
    received: list[Any] = []
    try:
        consumer.transport.register_with_event_loop(consumer.connection, hub)
        with Consumer(consumer, [queue], callbacks=[lambda b, m: received.append(b)]):
            loop = hub.create_loop()
            listener = consumer.transport.listener
            first_pid = listener.backend_pid
            # when its LISTEN connection is killed and comes back
            terminate(db_url, first_pid)
            deadline = time.monotonic() + 15
            while listener.backend_pid in (None, first_pid) and time.monotonic() < deadline:
                next(loop)
            assert listener.backend_pid not in (None, first_pid)
            next(loop)  # one turn to watch the new socket
            # then a message published now is delivered through the new connection
            producer.Producer().publish({"n": 1}, routing_key="looped-again")
            while not received and time.monotonic() < deadline:
                next(loop)
        assert received == [{"n": 1}]
    finally:
        consumer.release()
        hub.close()


def test_acks_that_could_not_be_sent_are_sent_when_the_channel_closes(
        db_url: str, conns: list[Connection]) -> None:
    # given a consumer on kombu's event loop, whose acks wait for the loop's next turn
    from kombu.asynchronous import Hub

    conn = connect(db_url, conns)
    hub = Hub()
    try:
        conn.transport.register_with_event_loop(conn.connection, hub)
        deliver_one(conn, "acked-late").ack()
        # when its session dies just as the turn sends the delete
        terminate(db_url, conn.transport.store.connect().info.backend_pid)
        with pytest.raises(conn.connection_errors):
            conn.default_channel.flush_acks()
        # and the connection is closed, as kombu and Celery do after a connection error
        conn.release()
        # then the acknowledged message is deleted, not given back to run again
        assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_message") == [(0,)]
    finally:
        hub.close()


def test_a_consumer_rescued_away_raises_a_connection_error_and_its_session_stays_usable(
        db_url: str, conns: list[Connection]) -> None:
    # given a consumer whose row a rescuer deleted (its heartbeat lapsed)
    conn = connect(db_url, conns)
    queue = Queue("lapsed")
    queue(conn.default_channel).declare()
    assert conn.transport.claim(["lapsed"], 1) == []
    sql(db_url, "DELETE FROM pgjobs_broker_consumer")
    # when it next claims, with a message waiting
    conn.Producer().publish({"n": 1}, routing_key="lapsed")
    # then it raises a connection error, so that its client drops what it prefetched ...
    with pytest.raises(conn.connection_errors) as raised:
        conn.transport.claim(["lapsed"], 1)
    assert isinstance(raised.value, LeaseExpired)
    # ... and the failed claim's transaction is gone: the same session works on
    session = conn.transport.store.connect()
    assert session.execute("SELECT 1").fetchone() == (1,)
