"""Fixtures for the broker conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from broker_helpers import FAST_OPTIONS, PG_TRANSPORT, Connect
from kombu import Connection


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
