"""The solo and threads pools claim their next batch as soon as their window frees up.

Their tasks finish without any socket of the event loop becoming readable (in the loop itself,
or on a pool thread). With the safety-net poll set to a minute, a backlog of several prefetch
windows drains only if each freed window wakes the loop.
"""

from __future__ import annotations

import json

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
