"""The claim's plan does not depend on the message table's statistics: before any ANALYZE
(a new database, autovacuum off or not run yet) it walks each queue's ready index in claim
order instead of reading the whole backlog and sorting it."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest

from broker.queries import QUERIES

BACKLOG = 20_000
FILL = """
INSERT INTO pgjobs_broker_message (queue, priority, payload)
SELECT 'q' || (i %% %(queues)s), i %% 3, repeat('x', 900) FROM generate_series(1, %(rows)s) i
"""
CONSUMER = """
INSERT INTO pgjobs_broker_consumer (id, hostname, pid, expires_at)
VALUES (%(id)s, 'plans', 1, now() + interval '1 hour')
"""
STATISTICS = "SELECT count(*) FROM pg_stats WHERE tablename = 'pgjobs_broker_message'"


def claim_plan(conn: psycopg.Connection, queues: list[str]) -> str:
    """EXPLAIN ANALYZE of a claim of 8 from ``queues``, in the transaction a consumer sends
    (its settings first); rolled back."""
    consumer = uuid.uuid4()
    conn.execute(CONSUMER, {"id": consumer})
    with conn.transaction(force_rollback=True):
        conn.execute(QUERIES["claim_settings"], {"timeout": "10s"})
        rows = conn.execute("EXPLAIN (ANALYZE, COSTS off, TIMING off) " + QUERIES["claim"],
                            {"consumer": consumer, "queues": queues, "limit": 8, "now": None,
                             "busy": []}).fetchall()
    return "\n".join(line for (line,) in rows)


@pytest.mark.parametrize("queues", [1, 10, 100])
def test_a_claim_on_a_table_never_analysed_walks_the_ready_index(
        db_url: str, queues: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Given a backlog in a message table the planner has no statistics for
        conn.execute(FILL, {"queues": queues, "rows": BACKLOG})
        assert conn.execute(STATISTICS).fetchone() == (0,)

        # When a consumer claims from its queues
        plan = claim_plan(conn, [f"q{i}" for i in range(queues)])

    # Then the queues' ready index is read in order, and nothing whole
    assert "Bitmap" not in plan, plan
    assert "Seq Scan on pgjobs_broker_message" not in plan, plan
    ready = [line for line in plan.splitlines() if "pgjobs_broker_message_ready" in line]
    assert ready and all("Index Scan" in line for line in ready), plan
    # and it locks just the eight rows it takes: from one queue, or one from each of the
    # first eight of many
    assert locked(plan) == 8, plan


def locked(plan: str) -> int:
    """The rows all LockRows nodes of ``plan`` locked."""
    found = re.findall(r"LockRows \(actual rows=(\d+)(?:\.\d+)? loops=(\d+)\)", plan)
    return sum(int(rows) * int(loops) for rows, loops in found)
