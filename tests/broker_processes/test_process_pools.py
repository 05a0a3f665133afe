"""The solo and threads pools claim their next batch as soon as their window frees up.

Their tasks finish without any socket of the event loop becoming readable (in the loop itself,
or on a pool thread). With the safety-net poll set to a minute, a backlog of several prefetch
windows drains only if each freed window wakes the loop. And a threads pool, whose tasks ack on
its own threads, still records every ack when the worker stops warm.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

POLL = 60.0


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("threads", 2)])
def test_a_backlog_drains_without_waiting_for_the_poll(procs, pool: str, concurrency: int):
    # Given a backlog of fifty prefetch windows, and a worker whose safety-net poll is a minute
    keys = [f"{pool}-{n}" for n in range(200 * concurrency)]
    procs.publish(keys)
    procs.workers.env["PROCESS_TEST_TRANSPORT_OPTIONS"] = json.dumps({"polling_interval": POLL})
    # When a worker with that pool starts
    procs.workers.start(pool, concurrency=concurrency, pool=pool)
    # Then it drains the whole backlog well within one poll, each task exactly once
    wait_until(lambda: procs.runs.all_done(keys), POLL / 2, "the backlog to drain",
               procs.workers.logs)
    assert procs.runs.done_per_key() == {key: 1 for key in keys}


def test_a_threads_pool_worker_stopped_warm_records_what_it_finished(procs):
    # Given a threads-pool worker running two slow tasks, with more queued behind them
    keys = [f"warm-{n}" for n in range(6)]
    procs.publish(keys, seconds=2.0)
    worker = procs.workers.start("warm", concurrency=2, pool="threads")
    wait_until(lambda: len(procs.runs.running()) == 2, 30, "two tasks to be running",
               procs.workers.logs)

    # When it is told to stop (SIGTERM: Celery's warm shutdown lets running tasks finish,
    # and they ack on the pool's threads while the worker winds down)
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=60)
    finished = sum(procs.runs.done_per_key().values())

    # Then another worker runs what was left, and nothing the first one finished runs again
    procs.workers.start("after", concurrency=2)
    wait_until(lambda: procs.runs.all_done(keys), 60, "the rest to run", procs.workers.logs)
    procs.settle()
    assert finished >= 2
    assert procs.runs.done_per_key() == {key: 1 for key in keys}
