"""Queue lifetimes as in AMQP: an auto-delete queue goes with its last consumer, a queue
declared with ``x-expires`` after that long without one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from broker_helpers import Connect, kill_heartbeat, publish, sql
from kombu import Connection, Queue


def queue_rows(db_url: str, name: str) -> tuple[int, int]:
    """``(queues named name, messages in it)``."""
    ((queues, messages),) = sql(
        db_url, "SELECT (SELECT count(*) FROM pgjobs_broker_queue WHERE name = %(q)s), "
                "(SELECT count(*) FROM pgjobs_broker_message WHERE queue = %(q)s)", {"q": name})
    return queues, messages


def consuming(conn: Connection, queue: Queue) -> Callable[[], None]:
    """Start consuming ``queue`` on ``conn``; returns what stops it."""
    consumer = conn.Consumer([queue], callbacks=[lambda body, message: None])
    consumer.consume()
    return consumer.cancel


def leave(how: str, conn: Connection, stop: Callable[[], None], db_url: str,
          rescuer: Connection) -> None:
    if how == "cancel":
        stop()
    elif how == "close":
        conn.release()
    else:  # dies: its heartbeat stops and a live consumer rescues what it held
        kill_heartbeat(conn, db_url)
        rescuer.transport.store.rescue()


@pytest.mark.parametrize("how", ["cancel", "close", "die"])
def test_an_auto_delete_queue_goes_with_its_last_consumer_not_before(
        connect: Connect, db_url: str, how: str) -> None:
    # given an auto-delete queue with a waiting message, consumed by two consumers
    queue = Queue("shared-replies", auto_delete=True)
    first, second, producer = connect(), connect(), connect()
    stop_first, stop_second = consuming(first, queue), consuming(second, queue)
    publish(producer, queue, {"n": 1})
    # when the latest consumer goes
    leave(how, second, stop_second, db_url, producer)
    # then the queue and its message stay for the other
    assert queue_rows(db_url, "shared-replies") == (1, 1)
    # and when the last one goes too, the queue goes, with its message
    leave(how, first, stop_first, db_url, producer)
    assert queue_rows(db_url, "shared-replies") == (0, 0)


def test_a_queue_with_x_expires_keeps_its_messages_when_its_consumer_stops(
        connect: Connect, db_url: str) -> None:
    # given a durable task queue declared with x-expires (one minute), and a consumer of it
    queue = Queue("expiring", queue_arguments={"x-expires": 60_000})
    conn, producer = connect(), connect()
    stop = consuming(conn, queue)
    publish(producer, queue, {"n": 1})
    # when its consumer stops, and rescues run
    stop()
    producer.transport.store.rescue()
    # then the queue and its message are still there
    assert queue_rows(db_url, "expiring") == (1, 1)


def test_a_queue_with_x_expires_goes_once_unused_for_that_long(
        connect: Connect, db_url: str) -> None:
    # given a queue declared with x-expires (one minute), consumed, then left with a message
    queue = Queue("expiring", expires=60)
    conn, producer = connect(), connect()
    stop = consuming(conn, queue)
    publish(producer, queue, {"n": 1})
    stop()
    # when it has been unused for just under a minute, it stays
    age(db_url, "expiring", seconds=55)
    producer.transport.store.rescue()
    assert queue_rows(db_url, "expiring") == (1, 1)
    # and once unused for longer, the next rescue deletes it with its message
    age(db_url, "expiring", seconds=61)
    producer.transport.store.rescue()
    assert queue_rows(db_url, "expiring") == (0, 0)


def test_a_queue_with_x_expires_never_expires_while_consumed(
        connect: Connect, db_url: str) -> None:
    # given a queue declared with x-expires, consumed for longer than that
    queue = Queue("expiring", expires=60)
    conn, producer = connect(), connect()
    consuming(conn, queue)
    age(db_url, "expiring", seconds=120)
    # when rescues run, it stays
    producer.transport.store.rescue()
    assert queue_rows(db_url, "expiring") == (1, 0)


def age(db_url: str, queue: str, seconds: float) -> None:
    """Pretend ``queue`` has been idle for ``seconds``."""
    sql(db_url, "UPDATE pgjobs_broker_queue SET idle_since = now() - make_interval(secs => %(s)s)"
                " WHERE name = %(q)s", {"s": seconds, "q": queue})
