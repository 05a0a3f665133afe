"""The transport contract, run on pgjobs' PostgreSQL transport and on kombu's memory one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from broker_helpers import FAST_OPTIONS, PG_TRANSPORT
from contract import TransportContract
from kombu import Connection


class TestMemoryTransport(TransportContract):
    """Checks the contract itself against kombu's reference in-memory transport."""

    @pytest.fixture
    def connect(self, connections: list[Connection]) -> Callable[[], Connection]:
        def make() -> Connection:
            conn = Connection("memory://")
            connections.append(conn)
            return conn

        return make


class TestPostgresTransport(TransportContract):
    @pytest.fixture
    def connect(self, db_url: str, connections: list[Connection]) -> Callable[[], Connection]:
        def make() -> Connection:
            conn = Connection(db_url, transport=PG_TRANSPORT, transport_options=FAST_OPTIONS)
            connections.append(conn)
            return conn

        return make
