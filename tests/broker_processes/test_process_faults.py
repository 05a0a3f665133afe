"""Everyday faults of healthy workers: dropped sessions, a paused process.

A healthy worker runs each task once: not when its broker sessions are ended under it, and not
the prefetched tasks it held when it was paused past ``visibility_timeout``. Every test counts
runs per key, so a duplicate fails it.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import psycopg
import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

BROKER_SESSIONS = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'pgjobs-broker%%'
  AND pid <> pg_backend_pid()
"""


def _started_per_key(procs) -> Counter[str]:
    rows = procs.runs._query(
        "SELECT key, count(*) FROM process_test_runs WHERE phase = 'started' GROUP BY key")
    return Counter(dict(rows))


def test_ending_every_broker_session_of_two_busy_workers_runs_each_task_once(procs):
    # Given two workers, each running two slow tasks and holding more it prefetched
    procs.workers.start("left", concurrency=2)
    procs.workers.start("right", concurrency=2)
    keys = [f"busy-{n}" for n in range(10)]
    procs.publish(keys, seconds=4.0)
    wait_until(lambda: len(procs.runs.running()) == 4, 30, "four tasks to run",
               procs.workers.logs)

    # When the server ends every broker session (a proxy reset, a failover) while they run
    with psycopg.connect(procs.database_url, autocommit=True) as conn:
        ended = conn.execute(BROKER_SESSIONS).fetchall()
    assert len(ended) >= 6, "each worker has a claim, LISTEN and heartbeat session"

    # Then every task completes exactly once, and none even started twice
    wait_until(lambda: procs.runs.all_done(keys), 90, "every task to complete",
               procs.workers.logs)
    procs.settle()
    assert procs.runs.done_per_key() == {key: 1 for key in keys}
    assert _started_per_key(procs) == {key: 1 for key in keys}


def test_a_worker_paused_past_visibility_timeout_comes_back_whole(procs):
    # Given a worker running a slow task, with quick ones it prefetched waiting behind it
    paused = procs.workers.start("paused", concurrency=1)
    procs.publish(["slow"], seconds=3.0)
    wait_until(lambda: procs.runs.running() == {"slow"}, 30, "the slow task to start",
               procs.workers.logs)
    quick = [f"quick-{n}" for n in range(3)]
    procs.publish(quick)
    wait_until(lambda: _held(procs) >= 3, 20,
               "the quick tasks to be prefetched", procs.workers.logs)

    # When it is paused (SIGSTOP, as a GC pause or a frozen VM) past visibility_timeout,
    # another worker takes over its messages, and then it resumes
    os.kill(paused.process.pid, signal.SIGSTOP)
    try:
        other = procs.workers.start("other", concurrency=1)
        wait_until(lambda: procs.runs.all_done(quick), 60, "the other worker to run them",
                   procs.workers.logs)
    finally:
        os.kill(paused.process.pid, signal.SIGCONT)
    procs.settle()

    # Then it ran none of the tasks it had prefetched: each ran once, on the other worker
    done = procs.runs.done_per_key()
    assert {key: done[key] for key in quick} == {key: 1 for key in quick}
    for key in quick:
        assert [w for phase, w, _ in procs.runs.of_key(key)] == [other.nodename] * 2

    # ... it answers remote control again: ping, and a revoke sent after it resumed
    wait_until(lambda: paused.nodename in procs.workers.inspect_ping(timeout=2), 30,
               "the resumed worker to answer ping", procs.workers.logs)
    other.kill()
    revoked = "revoked-after-resume"
    task_id = procs.publish([revoked], countdown=3)[0]
    procs.app.control.revoke(task_id)
    procs.publish(["after-revoke"])
    wait_until(lambda: procs.runs.all_done(["after-revoke"]), 30,
               "the resumed worker to run new work", procs.workers.logs)
    procs.settle()
    assert procs.runs.done_per_key()[revoked] == 0


def _held(procs) -> int:
    """How many task messages a consumer holds."""
    with psycopg.connect(procs.database_url, autocommit=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM pgjobs_broker_message WHERE queue = %s "
            "AND consumer IS NOT NULL", (procs.app.conf.task_default_queue,)).fetchone()
    return count
