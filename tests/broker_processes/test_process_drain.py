"""Several workers share one queue: each task runs exactly once, and every worker answers."""

from __future__ import annotations

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance


def test_three_workers_drain_a_thousand_tasks_each_exactly_once(procs):
    # Given three workers on the same queue
    for name in ("one", "two", "three"):
        procs.workers.start(name, concurrency=2)

    # When a thousand tasks are published
    keys = [f"task-{n}" for n in range(1000)]
    procs.publish(keys)

    # Then each one runs, and none runs twice
    wait_until(lambda: procs.runs.all_done(keys), 120, "1,000 tasks to complete",
               procs.workers.logs)
    procs.settle()
    done = procs.runs.done_per_key()
    assert set(done) == set(keys)
    assert {key: count for key, count in done.items() if count != 1} == {}


def test_inspect_ping_is_answered_by_every_worker(procs):
    # Given two running workers
    names = {procs.workers.start(name).nodename for name in ("left", "right")}

    # When `celery inspect ping` is run
    # Then both answer (a freshly started worker may take a moment to bind its control queue)
    replies = wait_until(lambda: _answered(procs, names), 60, "both workers to answer ping",
                         procs.workers.logs)
    assert all(replies[name] == {"ok": "pong"} for name in names)


def _answered(procs, names: set[str]) -> dict[str, object]:
    replies = procs.workers.inspect_ping(timeout=3)
    return replies if names <= set(replies) else {}
