"""A worker killed with SIGKILL loses no task and runs none twice."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance


def test_tasks_of_a_killed_worker_complete_once_on_another(procs):
    # Given a worker running one slow task and holding the others it prefetched
    first = procs.workers.start("first", concurrency=1)
    keys = [f"slow-{n}" for n in range(4)]
    procs.publish(keys, seconds=2.0)
    interrupted = wait_until(procs.runs.running, 30, "a task to start", procs.workers.logs)

    # When that worker is killed mid-task and another worker starts
    first.kill()
    second = procs.workers.start("second", concurrency=2)

    # Then every task completes, the interrupted one ran again, and none completed twice
    wait_until(lambda: procs.runs.all_done(keys), 60, "every task to complete",
               procs.workers.logs)
    procs.settle()
    assert procs.runs.done_per_key() == {key: 1 for key in keys}
    for key in interrupted:
        workers = [worker for phase, worker, _ in procs.runs.of_key(key) if phase == "done"]
        assert workers == [second.nodename], procs.runs.of_key(key)


def test_task_whose_pool_process_is_killed_runs_again_and_completes_once(procs):
    # Given a worker whose pool process is running a slow task
    worker = procs.workers.start("lonely", concurrency=1)
    procs.publish(["victim"], seconds=2.0)
    wait_until(procs.runs.running, 30, "the task to start", procs.workers.logs)

    # When that pool process is killed (the worker itself lives on)
    (child,) = psutil.Process(worker.process.pid).children()
    child.send_signal(signal.SIGKILL)

    # Then the worker gives the task back and it runs again, completing exactly once
    wait_until(lambda: procs.runs.all_done(["victim"]), 60, "the task to complete",
               procs.workers.logs)
    procs.settle()
    phases = [phase for phase, _, _ in procs.runs.of_key("victim")]
    assert phases == ["started", "started", "done"]


def test_eta_task_held_by_a_killed_worker_runs_once_not_before_its_eta(procs):
    # Given a worker holding a task due a few seconds from now
    first = procs.workers.start("first", concurrency=1)
    eta = datetime.now(UTC) + timedelta(seconds=6)
    (task_id,) = procs.publish(["eta"], eta=eta)
    wait_until(lambda: _holds(procs, first, task_id), 20, "the worker to hold the ETA task",
               procs.workers.logs)

    # When it is killed before the ETA and another worker starts
    assert datetime.now(UTC) < eta, "the ETA passed before the worker could be killed"
    first.kill()
    second = procs.workers.start("second", concurrency=1)

    # Then the task runs exactly once, on the second worker, not before its ETA
    wait_until(lambda: procs.runs.all_done(["eta"]), 60, "the ETA task to run",
               procs.workers.logs)
    procs.settle()
    runs = procs.runs.of_key("eta")
    assert [(phase, worker) for phase, worker, _ in runs] == [
        ("started", second.nodename), ("done", second.nodename)]
    assert runs[0][2] >= eta.timestamp()


def _holds(procs, worker, task_id: str) -> bool:
    """Whether ``worker`` reports ``task_id`` among its scheduled (ETA) tasks."""
    scheduled = procs.scheduled(worker.nodename)
    if not scheduled:
        time.sleep(0.2)
    return any(entry["request"]["id"] == task_id for entry in scheduled)
