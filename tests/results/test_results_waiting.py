"""Waiters are woken by NOTIFY, honour their timeout and survive a lost LISTEN connection.

The backend's safety-net poll is 30 s in these tests (``get(interval=30)`` too, for backends
that poll), so a result seen well before that came from the wake-up, not the poll.
"""

from __future__ import annotations

import threading
import time

import pytest
from celery import group
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import ResultSet

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

SAFETY_POLL = 30.0
# Far below the safety-net poll: only a wake-up can return this early.
PROMPTLY = SAFETY_POLL / 3
LISTEN_SESSIONS = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                   "AND application_name = 'pgjobs-results-listen'")


def test_get_join_and_group_get_are_woken_by_the_result_not_the_poll(results):
    results.start_worker()
    sleep = results.app.tasks["rt.sleep"]

    # given tasks that finish a moment after their callers start waiting
    started = time.monotonic()
    single = sleep.delay(0.5, "one")
    joined = ResultSet([sleep.delay(0.5, n) for n in range(2)])
    grouped = group(sleep.s(0.5, n) for n in range(3))()

    # when the callers wait, the safety-net poll being 30 s away
    values = (single.get(timeout=SAFETY_POLL, interval=SAFETY_POLL),
              joined.join(timeout=SAFETY_POLL, interval=SAFETY_POLL),
              grouped.get(timeout=SAFETY_POLL, interval=SAFETY_POLL))

    # then each returns the results long before any poll could have found them
    assert values == ("one", [0, 1], [0, 1, 2])
    assert time.monotonic() - started < PROMPTLY


def test_get_with_a_timeout_raises_while_the_task_still_runs(results):
    results.start_worker()
    slow = results.app.tasks["rt.sleep"].delay(8, "late")

    # when the caller waits less than the task takes
    with pytest.raises(CeleryTimeout):
        slow.get(timeout=1.0)

    # then it gave up before the task was done, and the result still arrives later
    assert slow.state in ("PENDING", "STARTED")
    assert slow.get(timeout=SAFETY_POLL) == "late"


def test_a_waiter_whose_listen_connection_is_killed_recovers_by_itself(results):
    results.start_worker()
    sleep = results.app.tasks["rt.sleep"]
    waiting = sleep.delay(2, "survived")
    outcome: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: outcome.update(
        value=waiting.get(timeout=SAFETY_POLL - 5, interval=SAFETY_POLL)))

    # given a caller waiting on its LISTEN connection
    waiter.start()
    (old_pid,) = wait_until(lambda: results.query(LISTEN_SESSIONS), 10, "the LISTEN session")[0]

    # when the server ends that connection
    results.query("SELECT pg_terminate_backend(%s)", (old_pid,))

    # then the waiter still gets its result before the safety-net poll is due
    waiter.join(SAFETY_POLL)
    assert not waiter.is_alive()
    assert outcome == {"value": "survived"}
    # and it listens again on a new connection: the next wait is woken as before
    started = time.monotonic()
    assert sleep.delay(0.2, "again").get(timeout=SAFETY_POLL, interval=SAFETY_POLL) == "again"
    assert time.monotonic() - started < PROMPTLY
    assert [pid for (pid,) in results.query(LISTEN_SESSIONS)] not in ([], [old_pid])
