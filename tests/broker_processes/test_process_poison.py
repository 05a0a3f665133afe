"""No row can take a worker down: poison rows go to the dead-letter table, and the worker
runs the valid tasks queued before and after them, each exactly once."""

from __future__ import annotations

import json
import uuid

import process_app
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.broker.test_broker_messages import (
    EMBED,
    envelopes,
    poison_rows,
    task_envelope,
)
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

GENERATED = 50  # per batch: one naming no task the worker knows, one naming `record`
INSERT = """
INSERT INTO pgjobs_broker_message (queue, payload)
SELECT %s, payload FROM unnest(%s::text[]) WITH ORDINALITY AS t(payload, n) ORDER BY n
RETURNING id
"""
LEFT = "SELECT count(*) FROM pgjobs_broker_message"
DEAD = "SELECT id, reason FROM pgjobs_broker_dead_letter"


def generated_payloads(count: int, task: str) -> list[str]:
    """``count`` Hypothesis payloads for ``task``, the same on every run. The body they vary
    is one ``record`` fails on at once (an unexpected keyword)."""
    found: list[str] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(envelopes(task, [[], {"poison": True}, EMBED]))
    def collect(payload: str) -> None:
        found.append(payload)

    collect()
    return list(dict.fromkeys(found))


def record_row(key: str) -> str:
    """A valid ``record`` task message written straight into the table, like the poison."""
    return json.dumps(task_envelope(process_app.RECORD_TASK, [key, 0.0], task_id=str(uuid.uuid4())))


def insert(database_url: str, queue: str, *groups: list[str]) -> list[set[int]]:
    """Insert every group of payloads in one transaction; returns the row ids of each."""
    with psycopg.connect(database_url) as conn:
        return [{row_id for (row_id,) in conn.execute(INSERT, (queue, group))}
                for group in groups]


def query(database_url: str, statement: str) -> list[tuple]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(statement).fetchall()


def test_poison_rows_are_dead_lettered_and_the_worker_runs_every_valid_task_once(procs):
    # Given a running worker and valid tasks queued before the poison
    worker = procs.workers.start("survivor", concurrency=2)
    queue = procs.app.conf.task_default_queue
    before = [f"before-{n}" for n in range(3)]
    procs.publish(before)

    # When one row of each named poison shape, two batches of generated ones, and a valid row
    # written the same way go into the table at once, followed by more valid tasks. Rows of
    # the first batch that the broker lets through are rejected by the worker (no such task);
    # those of the second reach `record`, which fails on them unless a mangled body happens
    # to hold valid arguments.
    named = list(poison_rows(process_app.RECORD_TASK).values())
    named_ids, unknown_ids, _ = insert(
        procs.database_url, queue, [payload for payload, _ in named],
        generated_payloads(GENERATED, "poison.unregistered"),
        [*generated_payloads(GENERATED, process_app.RECORD_TASK), record_row("direct")])
    after = [f"after-{n}" for n in range(3)]
    procs.publish(after)

    # Then every valid task runs exactly once, and no message is left, held or waiting
    keys = [*before, "direct", *after]

    def drained() -> bool:
        assert worker.process.poll() is None, f"the worker died\n{worker.tail()}"
        return procs.runs.all_done(keys) and not query(procs.database_url, LEFT)[0][0]

    wait_until(drained, 60, "the valid tasks to run and the table to empty", procs.workers.logs)
    done = procs.runs.done_per_key()
    assert {key: done[key] for key in keys} == {key: 1 for key in keys}
    # and the worker is still up
    assert worker.process.poll() is None, worker.tail()
    # and every named poison row is in the dead-letter table with the broker's reason, and
    # every generated one of the first batch too, with the broker's reason or the worker's
    reasons = dict(query(procs.database_url, DEAD))
    assert len(named_ids) == len(named)
    assert all(reasons.get(row_id, "").startswith("malformed: ") for row_id in named_ids), [
        reasons.get(row_id) for row_id in named_ids]
    assert all(reasons.get(row_id) for row_id in unknown_ids)
