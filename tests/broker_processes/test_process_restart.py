"""A PostgreSQL restart in the middle of a drain loses no task and runs none twice."""

from __future__ import annotations

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_postgres_restart_during_a_drain_runs_each_task_once(private_procs, pool: str):
    procs, server = private_procs
    # Given a worker draining a queue on a server of its own (a threads pool acks on its
    # threads, while the event loop claims on the same connection)
    procs.workers.start("drainer", concurrency=2, pool=pool)
    keys = [f"task-{n}" for n in range(500)]
    procs.publish(keys, seconds=0.01)
    wait_until(lambda: sum(procs.runs.done_per_key().values()) >= 50, 60,
               "the drain to be under way", procs.workers.logs)

    # When PostgreSQL stops and starts again
    done_before = sum(procs.runs.done_per_key().values())
    server.stop()
    server.start()

    # Then every task still completes, exactly once, though the drain was cut short
    assert done_before < len(keys)
    wait_until(lambda: procs.runs.all_done(keys), 90, "every task to complete after restart",
               procs.workers.logs)
    procs.settle()
    assert procs.runs.done_per_key() == {key: 1 for key in keys}
