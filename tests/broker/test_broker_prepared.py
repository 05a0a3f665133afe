"""The transport option prepared_statements: statements prepared on the server when asked
for, and never otherwise (a transaction-pooling PgBouncer refuses them)."""

from __future__ import annotations

from collections import Counter

import pytest
from broker_helpers import PG_TRANSPORT, Connect, collect
from kombu import Connection, Producer, Queue

PREPARED = "SELECT count(*) FROM pg_prepared_statements"


def _publish(conn: Connection, queue: Queue, count: int) -> None:
    producer = Producer(conn.default_channel)
    for number in range(count):
        producer.publish({"n": number}, routing_key=queue.name, declare=[queue])


@pytest.mark.parametrize("prepared", [True, False])
def test_statements_are_prepared_only_when_asked_for(
        connect: Connect, names, prepared: bool) -> None:
    # Given a connection with or without the option, which publishes and consumes
    conn = connect(prepared_statements=prepared)
    queue = Queue(names("prepared"))
    _publish(conn, queue, 12)
    received = collect(conn, [queue], 12)

    # Then every message arrived once
    assert Counter(m.payload["n"] for m in received) == Counter(range(12))
    # ... and the publishing session holds prepared statements only if asked to
    held = conn.transport.store.connect().execute(PREPARED).fetchone()[0]
    assert (held > 0) is prepared, held


@pytest.mark.parametrize("value", ["true", "false", 1])
def test_a_prepared_statements_option_that_is_not_a_bool_is_named(db_url: str, value) -> None:
    conn = Connection(db_url, transport=PG_TRANSPORT,
                      transport_options={"prepared_statements": value})
    with pytest.raises(ValueError, match="broker transport option prepared_statements must "
                                         "be true or false"):
        conn.connect()
