"""Two worker hosts on one queue; one is cut off from the network for longer than
``visibility_timeout``, without being killed.

What pgjobs promises (the transport and :mod:`broker.consumer` docstrings): the cut-off host's
leases lapse, its messages go back and run on the other host. The task it was executing at
the cut runs on both, as with any lease whose holder vanished (at least once); it finishes on
the cut-off host once the link is back. A message it had only prefetched never runs there:
the cut-off worker drops what it prefetched once its heartbeat has been away for nearly
``visibility_timeout``, and a claim whose answer comes back after that (the network stalled
while the claim was under way) hands out nothing. Runs are counted by their ``started`` rows:
a ``done`` row written through a dead link may be written twice by the retry of one run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
import pytest
from process_harness import Worker, Workers, worker_env

from tests.network import netns
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

VISIBILITY_TIMEOUT = 5.0
# Seconds of silence after which a connection counts as dead; below visibility_timeout, as
# the defaults are (10 s against 60 s).
FAULT_TIMEOUT = 2
HEARTBEAT_INTERVAL = VISIBILITY_TIMEOUT / 4  # the transport's default
TASK_SECONDS = 1.0
TASKS = 8  # each worker prefetches 4 (concurrency 1): both hold some
# Proving that nothing more runs needs a quiet period: a lease and a heartbeat.
QUIET = VISIBILITY_TIMEOUT + HEARTBEAT_INTERVAL

RUNS = "SELECT key, worker, phase, at FROM process_test_runs ORDER BY id"
# The task ids leased to the consumers of one worker process.
HELD_BY_PID = """
SELECT m.payload::json -> 'headers' ->> 'id' FROM pgjobs_broker_message m
JOIN pgjobs_broker_consumer c ON c.id = m.consumer WHERE c.pid = %s
"""
# Holds back every claim of one worker process: a claim's lease needs the consumer's row.
LOCK_CONSUMERS = "SELECT id FROM pgjobs_broker_consumer WHERE pid = %s FOR UPDATE"
CLAIMS_WAITING = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
AND wait_event_type = 'Lock' AND query LIKE 'WITH wanted AS%%'
"""


@dataclass
class Site:
    """Workers on a host of their own, reaching the test's database through its link."""

    name: str
    host: netns.Host
    workers: Workers


@pytest.fixture
def sites(procs, tmp_path) -> Iterator[Callable[[str], Site]]:
    netns.require()
    with ExitStack() as stack:

        def site(name: str, fault_timeout: float = FAULT_TIMEOUT) -> Site:
            host, relay = stack.enter_context(netns.linked_host(procs.database_url))
            env = worker_env(relay.url(), "pgjobs", procs.app.conf.task_default_queue,
                             VISIBILITY_TIMEOUT)
            env["PROCESS_TEST_TRANSPORT_OPTIONS"] = json.dumps({"fault_timeout": fault_timeout})
            logs = tmp_path / name
            logs.mkdir()
            workers = Workers(env, logs, prefix=host.command([]))
            stack.callback(workers.kill_all)  # before the host goes
            return Site(name, host, workers)

        yield site


def _query(procs, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(procs.database_url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def _runs(procs) -> list[tuple[str, str, str, float]]:
    return _query(procs, RUNS)


def _held(procs, worker: Worker) -> set[str]:
    """The task ids leased to ``worker``'s consumers."""
    return {task_id for (task_id,) in _query(procs, HELD_BY_PID, (worker.process.pid,))}


def _started(runs: list[tuple], worker: str | None = None) -> Counter[str]:
    return Counter(key for key, by, phase, _ in runs
                   if phase == "started" and worker in (None, by))


def _done_by(runs: list[tuple], worker: str) -> set[str]:
    return {key for key, by, phase, _ in runs if phase == "done" and by == worker}


def _holding_while_running(procs, worker: Worker) -> set[str] | None:
    """The task ids ``worker`` holds once it runs one and holds another, else None."""
    if not _started(_runs(procs), worker.nodename):
        return None
    held = _held(procs, worker)
    return held if len(held) >= 2 else None


def _answers_ping(workers: Workers, worker: Worker, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.nodename in workers.inspect_ping(timeout=2):
            return True
    return False


def test_a_worker_cut_off_beyond_visibility_timeout_runs_nothing_it_no_longer_holds(
        procs, sites):
    # Given two worker hosts consuming one queue, each running a task and holding others
    a_site, b_site = sites("a"), sites("b")
    with ThreadPoolExecutor() as starting:  # side by side: a worker takes seconds to start
        a, b = starting.map(lambda site: site.workers.start(site.name, concurrency=1),
                            (a_site, b_site))
    keys = [f"task-{n}" for n in range(TASKS)]
    ids = dict(zip(procs.publish(keys, seconds=TASK_SECONDS), keys, strict=True))

    def logs() -> str:
        return a_site.workers.logs() + "\n" + b_site.workers.logs()

    held = wait_until(lambda: _holding_while_running(procs, a), 30,
                      "worker a to run a task and hold another", logs)

    # When host a's link goes down (packets dropped, nothing closed, the worker not killed)
    a_site.host.cut()
    cut_at = time.time()
    held_at_cut = {ids[task_id] for task_id in held | _held(procs, a)}

    # Then every message a held runs on b while a is still cut off
    wait_until(lambda: held_at_cut <= _done_by(_runs(procs), b.nodename), 40,
               "worker b to run the messages worker a held", logs)
    # When the link comes back, after more than visibility_timeout
    cut_for = time.time() - cut_at
    assert cut_for > VISIBILITY_TIMEOUT
    a_site.host.mend()

    # Then worker a finishes the task it was executing at the cut ...
    runs = _runs(procs)
    executing = {key for key, by, phase, at in runs
                 if by == a.nodename and phase == "started" and at < cut_at} - {
                     key for key, by, phase, at in runs
                     if by == a.nodename and phase == "done" and at < cut_at}
    assert len(executing) == 1, runs
    wait_until(lambda: executing <= _done_by(_runs(procs), a.nodename), 30,
               "worker a to finish the task it ran at the cut", logs)
    # ... answers a ping again (checked after the runs, which say more when both fail) ...
    answered = _answers_ping(a_site.workers, a, 40)
    # ... and starts nothing more
    time.sleep(QUIET)

    runs = _runs(procs)
    prefetched = held_at_cut - executing
    assert prefetched, "worker a held nothing beyond its running task: the test proves nothing"
    started = _started(runs)
    # ... every task ran exactly once, but the one a was executing at the cut: on a and on b
    assert started == {key: 2 if key in executing else 1 for key in keys}, runs
    on_b = _started(runs, b.nodename)
    assert all(on_b[key] == 1 for key in held_at_cut), runs
    # ... and nothing a had only prefetched ran on a
    assert not prefetched & set(_started(runs, a.nodename)), runs
    assert answered, f"worker a never answered a ping after the link came back\n{logs()}"
    print(f"a held {sorted(held_at_cut)} at the cut, executing {sorted(executing)}; "
          f"cut off for {cut_for:.1f} s")



def test_a_claim_answered_after_the_lease_lapsed_hands_out_nothing(procs, sites):
    # Given an idle worker on a host whose connections outlive a cut of a few seconds (its
    # fault budget is longer than the cut), with a claim of it under way in the database (held
    # back by a lock on its consumer row, as a slow claim would be). Its pool is threads: a
    # prefork pool hands a delivered task to its process only on a later loop turn, after the
    # turn's lease check, which hides a late claim's answer more often than not.
    a_site = sites("a", fault_timeout=30)
    a = a_site.workers.start("a", concurrency=1, pool="threads")
    logs = a_site.workers.logs
    with psycopg.connect(procs.database_url) as lock:
        lock.execute(LOCK_CONSUMERS, (a.process.pid,))
        procs.publish(["late"], seconds=TASK_SECONDS)
        wait_until(lambda: _query(procs, CLAIMS_WAITING)[0][0], 20,
                   "worker a to claim the new message", logs)

        # When its host is cut off, and the claim goes through while it is
        a_site.host.cut()
        cut = time.monotonic()
    wait_until(lambda: _held(procs, a), 20, "the claim of worker a to commit", logs)

    # ... and its lease lapses meanwhile: the message runs on another host
    b_site = sites("b")
    b = b_site.workers.start("b", concurrency=1)

    def both_logs() -> str:
        return logs() + "\n" + b_site.workers.logs()

    wait_until(lambda: _started(_runs(procs), b.nodename)["late"], 40,
               "worker b to run the message worker a claimed", both_logs)
    assert time.monotonic() - cut > VISIBILITY_TIMEOUT

    # When the link comes back, and the claim's answer with it
    a_site.host.mend()

    # Then worker a hands out nothing of that answer: the task ran once, on b
    answered = _answers_ping(a_site.workers, a, 40)
    time.sleep(QUIET)
    runs = _runs(procs)
    assert _started(runs) == {"late": 1}, runs
    assert _started(runs, b.nodename) == {"late": 1}, runs
    assert answered, f"worker a never answered a ping after the link came back\n{both_logs()}"
