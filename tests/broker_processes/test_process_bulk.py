"""Tasks sent with ``broker.enqueue_many`` run on a real worker exactly once, on time, in
priority order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import process_app
import pytest

from broker import enqueue_many
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance


def test_every_task_of_a_bulk_enqueue_runs_once_and_none_before_its_eta(procs):
    # given tasks sent in bulk: plain ones, ones with a countdown and ones with an ETA
    record = procs.app.tasks[process_app.RECORD_TASK]
    eta = datetime.now(UTC) + timedelta(seconds=6)
    plain = [f"plain-{n}" for n in range(300)]
    counted = [f"countdown-{n}" for n in range(5)]
    timed = [f"eta-{n}" for n in range(5)]
    sent_at = datetime.now(UTC).timestamp()
    enqueue_many([record.s(key) for key in plain]
                 + [record.s(key).set(countdown=5) for key in counted]
                 + [record.s(key).set(eta=eta) for key in timed])

    # when a worker runs them
    procs.workers.start("bulk", concurrency=2)

    # then each one runs, none twice, and none before its time
    keys = plain + counted + timed
    wait_until(lambda: procs.runs.all_done(keys), 90, "every bulk task to run",
               procs.workers.logs)
    procs.settle()
    done = procs.runs.done_per_key()
    assert {key: done[key] for key in keys if done[key] != 1} == {}
    assert min(_started(procs, key) for key in counted) >= sent_at + 5
    assert min(_started(procs, key) for key in timed) >= eta.timestamp()


def test_a_bulk_enqueue_runs_higher_priorities_first(procs):
    # given low and high priority tasks sent in one bulk call, lows first, before any worker
    record = procs.app.tasks[process_app.RECORD_TASK]
    low = [f"low-{n}" for n in range(20)]
    high = [f"high-{n}" for n in range(20)]
    enqueue_many([record.s(key).set(priority=1) for key in low]
                 + [record.s(key).set(priority=9) for key in high])

    # when one worker with one process runs them
    procs.workers.start("ordered", concurrency=1)
    wait_until(lambda: procs.runs.all_done(low + high), 60, "the tasks to run",
               procs.workers.logs)

    # then every high-priority task started before every low-priority one
    assert max(_started(procs, key) for key in high) < min(_started(procs, key) for key in low)


def _started(procs, key: str) -> float:
    (at,) = [at for phase, _, at in procs.runs.of_key(key) if phase == "started"]
    return at
