"""``pgjobs health worker|beat`` against real worker and beat processes, frozen with
SIGSTOP and killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal

import pytest
from ops_helpers import one_line_error
from processes import BIN, nodename

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance


def test_a_live_worker_is_healthy_and_a_frozen_one_is_not(cli, processes):
    # Given a running worker
    worker = processes.worker("probe")
    node = nodename("probe")

    # Then it is healthy, whether any worker or this one is asked about
    healthy = cli("health", "worker")
    assert healthy.exit_code == 0, healthy.output
    assert healthy.stdout.startswith(f"healthy: {node} answered")
    assert cli("health", "worker", "--hostname", node).exit_code == 0
    # ... and the checks leave no consumer of their own behind to count as a worker
    assert [w["name"] for w in json.loads(cli("status", "--json").stdout)["workers"]] == [node]
    other = one_line_error(cli("health", "worker", "--hostname", f"other@{node.split('@')[1]}"))
    assert "no fresh heartbeat from worker other@" in other

    # When it is frozen (its lease has not lapsed yet)
    os.kill(worker.popen.pid, signal.SIGSTOP)
    try:
        frozen = cli("health", "worker", "--hostname", node, "--timeout", "1")
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)

    # Then it is not healthy: it does not answer the ping
    assert f"{node} did not answer a ping within 1s" in one_line_error(frozen)


def test_no_worker_is_unhealthy(cli):
    assert "no fresh heartbeat from any worker" in one_line_error(cli("health", "worker"))


@pytest.mark.parametrize(("args", "complaint"), [
    (["worker", "--hostname", "web-1"], "'web-1' is not a worker node name"),
    (["worker", "--timeout", "0"], "--timeout"),
    (["worker", "--timeout", "nan"], "'--timeout': nan is not in the range 0.1<=x<=3600"),
    (["worker", "--timeout", "inf"], "'--timeout': inf is not in the range"),
    (["beat", "--max-age", "x"], "'x' is not a valid float"),
    (["beat", "--max-age", "nan"], "'--max-age': nan is not in the range 1<=x<=86400"),
    (["beat", "--max-age", "1e308"], "'--max-age': 1e+308 is not in the range"),
    (["nurse"], "No such command 'nurse'"),
])
def test_bad_input_is_one_line(cli, args, complaint):
    assert complaint in one_line_error(cli("health", *args))


def test_an_unknown_command_is_one_line(cli):
    assert "No such command 'nurse'" in one_line_error(cli("nurse"))


def test_beat_is_healthy_while_it_leads_and_passes(cli, processes):
    # Given a beat that took the leader lock
    beat = processes.start("beat", str(BIN / "celery"), "-A", "config", "beat", "-l", "INFO")
    wait_until(lambda: cli("health", "beat").exit_code == 0, 60, "beat to lead", processes.logs)
    assert cli("health", "beat").stdout.startswith("healthy: pgjobs-beat:")

    # When it is frozen, Then it soon counts as stuck, though it keeps the lock
    os.kill(beat.popen.pid, signal.SIGSTOP)
    stuck = wait_until(lambda: _failure(cli("health", "beat", "--max-age", "2")), 30,
                       "a frozen beat to count as stuck")
    assert "holds the lock but its last pass was" in stuck and "may be stuck" in stuck

    # When it is killed, Then no beat leads
    beat.kill()
    gone = wait_until(lambda: _failure(cli("health", "beat")), 30, "the lock to be freed")
    assert "no beat holds the leader lock" in gone


def _failure(result) -> str:
    return one_line_error(result) if result.exit_code else ""
