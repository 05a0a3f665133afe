"""Fixtures for the broker conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from broker_helpers import FAST_OPTIONS, PG_TRANSPORT, Connect
from kombu import Connection
from kombu.asynchronous import Hub

from broker.store import Store


@pytest.fixture
def names() -> Callable[[str], str]:
    """Unique queue/exchange names, so tests on the shared memory transport never meet."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}.{suffix}"


@pytest.fixture
def connections() -> Iterator[list[Connection]]:
    opened: list[Connection] = []
    yield opened
    for conn in opened:
        conn.release()


@pytest.fixture
def connect(db_url: str, connections: list[Connection]) -> Connect:
    """Connected kombu connections on this test's database, with short intervals."""
    def make(**options: Any) -> Connection:
        conn = Connection(db_url, transport=PG_TRANSPORT,
                          transport_options={**FAST_OPTIONS, **options})
        connections.append(conn)
        conn.connect()
        return conn

    return make


@pytest.fixture
def looped(connect: Connect) -> Iterator[Callable[..., tuple[Connection, Hub]]]:
    """A consumer connection registered with kombu's event loop, as a worker's is."""
    hubs: list[Hub] = []

    def make(**options: Any) -> tuple[Connection, Hub]:
        conn, hub = connect(polling_interval=30, **options), Hub()
        hubs.append(hub)
        conn.transport.register_with_event_loop(conn.connection, hub)
        return conn, hub

    yield make
    for hub in hubs:
        hub.close()


@pytest.fixture
def acks_alone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many messages each ack sent on its own (not inside a claim) recorded."""
    sent: list[int] = []
    original = Store.ack

    def counted(store: Store, message_ids: Any, consumer: Any, records: Any = ()) -> None:
        sent.append(len(message_ids))
        original(store, message_ids, consumer, records)

    monkeypatch.setattr(Store, "ack", counted)
    return sent
