"""Concurrent claims: consumers of overlapping queue lists, each claiming windows of its own
size, take every message exactly once."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter

import psycopg

from broker.store import Store

QUEUES = [f"q{n}" for n in range(7)]
MESSAGES = 3000
FILL = """
INSERT INTO pgjobs_broker_message (queue, priority, payload)
SELECT 'q' || (i %% 7), (i * 7919) %% 5, '{}' FROM generate_series(1, %(rows)s) i
"""


def consume(db_url: str, seed: int, claimed: Counter, guard: threading.Lock) -> None:
    """Claim random windows from random subsets of the queues until three claims in a row
    of all the queues come back empty."""
    rng, store, consumer = random.Random(seed), Store(db_url), uuid.uuid4()
    try:
        store.beat(consumer, "claims", 3600)
        empty = 0
        while empty < 3:
            queues = rng.sample(QUEUES, rng.randint(1, len(QUEUES)))
            rows = store.claim(consumer, queues, rng.choice([1, 2, 3, 5, 8, 13]))
            if rows:
                empty = 0
            elif len(queues) == len(QUEUES):
                empty += 1
            with guard:
                claimed.update(row.id for row in rows)
    finally:
        store.close()


def test_concurrent_consumers_of_overlapping_queues_claim_each_message_once(
        db_url: str) -> None:
    # Given messages of mixed priorities spread over seven queues
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(FILL, {"rows": MESSAGES})

    # When four consumers claim at once, each from changing subsets of the queues
    claimed: Counter = Counter()
    guard = threading.Lock()
    threads = [threading.Thread(target=consume, args=(db_url, seed, claimed, guard))
               for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # Then every message was claimed, and none twice
    assert not any(thread.is_alive() for thread in threads)
    assert len(claimed) == MESSAGES
    assert claimed.most_common(1)[0][1] == 1
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgjobs_broker_message"
                            " WHERE consumer IS NULL").fetchone() == (0,)
