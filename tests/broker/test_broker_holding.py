"""Who may change a held message: only the consumer holding it gives it back, and nothing a
consumer claimed stays stranded in its hands."""

from __future__ import annotations

from typing import Any

import pytest
from broker_helpers import Connect, kill_heartbeat, publish, rows, sql
from kombu import Connection, Queue
from kombu.message import Message


def taken_over(connect: Connect, db_url: str, queue: Queue) -> tuple[Connection, Message,
                                                                       Connection, Message]:
    """A message first held by a consumer whose lease lapsed, then rescued and now held by a
    second consumer: ``(first, its stale message, second, its current message)``."""
    first = connect()
    publish(first, queue, {"n": 1})
    stale = queue(first.default_channel).get()
    kill_heartbeat(first, db_url)
    second = connect()
    second.transport.store.rescue()
    current = queue(second.default_channel).get()
    assert current is not None and current.delivery_tag == stale.delivery_tag
    return first, stale, second, current


@pytest.mark.parametrize("let_go", ["reject with requeue", "close its connection"])
def test_a_consumer_whose_lease_lapsed_cannot_give_back_what_another_now_holds(
        connect: Connect, db_url: str, let_go: str) -> None:
    # given a message rescued from a consumer whose lease lapsed, now run by a second one
    queue = Queue("contested")
    first, stale, second, current = taken_over(connect, db_url, queue)
    # when the first consumer lets go of its stale copy
    if let_go == "reject with requeue":
        stale.reject(requeue=True)
    else:
        first.release()
    # then the second still holds it, so no third consumer can run it at the same time
    assert rows(db_url, "contested") == [(current.delivery_tag, second.transport.consumer_id)]


def test_a_failing_callback_does_not_strand_the_rest_of_its_claim(
        connect: Connect, db_url: str) -> None:
    # given three messages claimed together by a consumer whose callback fails on the first
    conn = connect()
    queue = Queue("stranded")
    for n in range(3):
        publish(conn, queue, {"n": n})

    def on_message(body: Any, message: Message) -> None:
        raise RuntimeError("the application's handler failed")

    consumer = conn.Consumer([queue], callbacks=[on_message])
    consumer.consume()
    # when the failure surfaces from drain_events
    with pytest.raises(RuntimeError):
        conn.drain_events(timeout=2)
    # then the two messages it never handed over wait in the queue for any consumer
    assert [consumer_id for _, consumer_id in rows(db_url, "stranded")[1:]] == [None, None]
    assert len(conn.transport.claim(["stranded"], 10)) == 2


@pytest.mark.parametrize("settle", ["ack", "reject without requeue"])
def test_a_consumer_whose_lease_lapsed_cannot_delete_what_another_now_holds(
        connect: Connect, db_url: str, settle: str) -> None:
    # given a message rescued from a consumer whose lease lapsed, now run by a second one
    queue = Queue("contested")
    first, stale, second, current = taken_over(connect, db_url, queue)
    # when the first consumer's task finishes and settles its stale copy
    if settle == "ack":
        stale.ack()
    else:
        stale.reject(requeue=False)
    # then the message still belongs to the second, and nothing went to the dead letters
    assert rows(db_url, "contested") == [(current.delivery_tag, second.transport.consumer_id)]
    assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_dead_letter") == [(0,)]
