"""Helpers for the broker conformance suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from kombu import Connection, Consumer, Queue
from kombu.asynchronous import Hub
from kombu.message import Message

PG_TRANSPORT = "broker.transport:Transport"
# Short intervals keep lease and wake-up tests quick.
FAST_OPTIONS = {"polling_interval": 0.2, "visibility_timeout": 2, "heartbeat_interval": 0.2}

Connect = Callable[..., Connection]
"""Opens a connected kombu connection on the test database; keyword arguments are extra
transport options."""


def collect(conn: Connection, queues: list[Queue], count: int, timeout: float = 10.0,
            ack: bool = True, **consumer_options: Any) -> list[Message]:
    """Consume until ``count`` messages arrived (bounded by ``timeout``); returns them."""
    received: list[Message] = []

    def on_message(body: Any, message: Message) -> None:
        received.append(message)
        if ack:
            message.ack()

    deadline = time.monotonic() + timeout
    with Consumer(conn, queues, callbacks=[on_message], **consumer_options):
        while len(received) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return received


def sql(url: str, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on the test database and return its rows (empty if none)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params or {})  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def rows(db_url: str, queue: str) -> list[tuple[Any, ...]]:
    """``(id, consumer)`` of every message row of ``queue``."""
    return sql(db_url, "SELECT id, consumer FROM pgjobs_broker_message WHERE queue = %(q)s "
                       "ORDER BY id", {"q": queue})


def publish(conn: Connection, queue: Queue, body: Any, **options: Any) -> None:
    # The default exchange ('') routes by queue name.
    routing_key = queue.routing_key if queue.exchange.name else queue.name
    conn.Producer().publish(body, exchange=queue.exchange, routing_key=routing_key,
                            declare=[queue], **options)


def kill_heartbeat(conn: Connection, db_url: str) -> None:
    """Make ``conn``'s consumer look dead: no more heartbeats, and its last one aged past
    its visibility timeout."""
    transport = conn.transport
    transport.consumer.heartbeat.stop()
    sql(db_url, "UPDATE pgjobs_broker_consumer SET expires_at = now() - interval '1 second' "
                "WHERE id = %(id)s", {"id": transport.consumer_id})


def turn_until(hub: Hub, done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Turn ``hub``'s loop until ``done()``, failing after ``timeout`` seconds."""
    loop = hub.create_loop()
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        next(loop)


def backlog(connect: Connect, name: str, count: int) -> Queue:
    """Queue ``name`` holding ``count`` messages ``{"n": 0}`` and up."""
    queue, producer = Queue(name), connect()
    for n in range(count):
        publish(producer, queue, {"n": n})
    return queue


def drain_in_loop(db_url: str, conn: Connection, hub: Hub, queue: Queue,
                  window: int = 4) -> dict[int, int]:
    """Consume ``queue`` in ``hub``'s loop with a prefetch window of ``window``, acking each
    message as it arrives, until no message is left; how often each ``n`` ran."""
    runs: dict[int, int] = {}

    def run(body: dict[str, int], message: Message) -> None:
        runs[body["n"]] = runs.get(body["n"], 0) + 1
        message.ack()

    with Consumer(conn, [queue], callbacks=[run], prefetch_count=window):
        turn_until(hub, lambda: sql(db_url, "SELECT count(*) FROM pgjobs_broker_message")
                   == [(0,)], "the backlog to be acked")
    return runs
