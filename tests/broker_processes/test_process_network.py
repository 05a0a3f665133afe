"""A worker on another host whose connections go dead: it notices within its fault budget,
says so, and recovers by itself."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from process_harness import Workers, worker_env

from tests.network import netns
from tests.polling import wait_until

pytestmark = [
    pytest.mark.acceptance,
    pytest.mark.skipif(not netns.available(), reason="needs root for ip netns"),
]

FAULT_TIMEOUT = 4


@pytest.fixture
def remote_workers(procs, tmp_path) -> Iterator[tuple[Workers, netns.Host, netns.Relay]]:
    """Workers on a host of their own, reaching the test's database through a cuttable link."""
    host = netns.Host()
    relay = netns.Relay(host.gateway, procs.database_url)
    env = worker_env(relay.url(), "pgjobs", procs.app.conf.task_default_queue, 3.0)
    env["PROCESS_TEST_TRANSPORT_OPTIONS"] = json.dumps({"fault_timeout": FAULT_TIMEOUT})
    workers = Workers(env, tmp_path, prefix=host.command([]))
    try:
        yield workers, host, relay
    finally:
        workers.kill_all()
        relay.close()
        host.destroy()


def test_a_worker_whose_connections_die_says_so_within_its_fault_budget_and_recovers(
        procs, remote_workers):
    # Given a worker on another host, idle after running a task
    workers, host, relay = remote_workers
    worker = workers.start("remote")
    procs.publish(["before"])
    wait_until(lambda: procs.runs.all_done(["before"]), 30, "the first task", workers.logs)
    wait_until(lambda: len(relay.client_ports()) >= 4, 20,
               "its claim, LISTEN, heartbeat and task connections", workers.logs)
    logged = len(worker.log.read_text())

    # When every connection it has goes dead for good, packets dropped and nothing closed (a
    # failover, a NAT or firewall that forgot them), while new connections still work
    host.lose(relay.client_ports())

    # Then it reports the dead connections within a few fault budgets, rather than waiting on
    # half-open sockets for the kernel's 15 minutes ...
    wait_until(lambda: _reported(worker.log.read_text()[logged:]), 6 * FAULT_TIMEOUT,
               "the worker to report its dead connections", workers.logs)
    # ... and reconnects by itself: new work runs, each task exactly once
    procs.publish(["after"])
    wait_until(lambda: procs.runs.all_done(["after"]), 60, "the worker to recover",
               workers.logs)
    procs.settle()
    assert procs.runs.done_per_key() == {"before": 1, "after": 1}


def _reported(log: str) -> bool:
    return "heartbeat failed" in log and "lost the database connection" in log
