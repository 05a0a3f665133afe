"""Several workers share one queue: each task runs exactly once, and every worker answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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


def test_broadcast_revoke_reaches_every_worker_holding_a_task(procs):
    # Given two workers, and a task due in a few seconds held by one of them
    workers = [procs.workers.start(name) for name in ("keeper", "other")]
    eta = datetime.now(UTC) + timedelta(seconds=5)
    (revoked,) = procs.publish(["revoked"], eta=eta)
    wait_until(lambda: _holder(procs, workers, revoked), 20, "a worker to hold the ETA task",
               procs.workers.logs)

    # When it is revoked by broadcast, then a plain task is published
    procs.app.control.revoke(revoked)
    procs.publish(["after"])

    # Then the plain task runs, and the revoked one never does, though its ETA has passed
    wait_until(lambda: procs.runs.all_done(["after"]), 30, "the plain task to run",
               procs.workers.logs)
    wait_until(lambda: datetime.now(UTC) > eta + timedelta(seconds=2), 30, "the ETA to pass")
    procs.settle()
    assert procs.runs.of_key("revoked") == []


def _holder(procs, workers, task_id: str) -> bool:
    return any(entry["request"]["id"] == task_id
               for worker in workers for entry in procs.scheduled(worker.nodename))
