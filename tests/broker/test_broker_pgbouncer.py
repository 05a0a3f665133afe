"""The broker through a real PgBouncer in transaction mode: no session state may leak
between clients that share a server connection."""

from __future__ import annotations

import json
from collections import Counter

from broker_helpers import FAST_OPTIONS, PG_TRANSPORT, collect, publish
from kombu import Connection, Queue
from pgbouncer import pgbouncer


def test_producers_sharing_one_server_connection_publish_through_pgbouncer(db_url: str) -> None:
    # Given two producers whose transactions PgBouncer runs on one server connection
    queue = Queue("bounced")
    with pgbouncer(db_url, pool_size=1) as bounced:
        producers = [Connection(bounced, transport=PG_TRANSPORT, transport_options=FAST_OPTIONS)
                     for _ in range(2)]
        try:
            # When each publishes more often than a driver's automatic-prepare threshold
            for number in range(20):
                publish(producers[number % 2], queue, {"n": number})
        finally:
            for producer in producers:
                producer.release()

    # Then every message is stored, once
    with Connection(db_url, transport=PG_TRANSPORT, transport_options=FAST_OPTIONS) as direct:
        received = collect(direct, [queue], 20)
    runs = Counter(json.loads(message.body)["n"] for message in received)
    assert runs == Counter(range(20))
