"""Acceptance: two ``celery beat`` processes on two hosts; the leader's host is cut off from the
network (packets dropped, nothing closed, the process not killed).

Its lock connection stays open on the server's side (the link's far end still holds it), so
the standby takes over through the lease: once the cut-off leader's lease expires, the standby
ends its session and leads. Every tick of a per-second entry is sent once over the whole test,
including after the old leader's link comes back; the old leader then stands by.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from beat_helpers import beat_command, drain, leader_application, ticks
from click.testing import CliRunner

from beat.cli import schedule
from beat.leadership import TAKEOVER_PROMISE
from tests.network import netns
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

QUEUE = "beat-hosts"
ENTRY = "every-second"
# The promise counts from the leader's last renewal; the cut lands up to a pass (1 s) after it,
# and a loaded machine adds some scheduling delay on top.
SLACK = 5.0


@dataclass
class Beat:
    """A beat process on a host of its own."""

    host: netns.Host
    process: subprocess.Popen
    log: Path

    @property
    def identity(self) -> str:
        """Its lock connection's application_name (see beat.leadership.default_identity)."""
        return f"pgjobs-beat:{os.uname().nodename}:{self.process.pid}"[:63]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def beats_on_hosts(app_db: str, tmp_path: Path) -> Iterator[Callable[[str], Beat]]:
    """Start ``celery -A config beat`` on a host of its own, reaching the test's database
    through that host's link; killed, and the host removed, afterwards."""
    netns.require()
    with ExitStack() as stack:

        def start(name: str) -> Beat:
            host, relay = stack.enter_context(netns.linked_host(app_db))
            log = tmp_path / f"beat-{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    host.command(beat_command(tmp_path / f"unused-schedule-{name}")),
                    env={**os.environ, "DATABASE_URL": relay.url()}, stdout=out,
                    stderr=subprocess.STDOUT, cwd=tmp_path)
            stack.callback(_kill, process)  # before its host goes
            return Beat(host, process, log)

        yield start


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def _eventually(check: Callable[[], bool], timeout: float) -> bool:
    """Whether ``check`` holds within ``timeout`` seconds (for a check asserted later)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _ticks_by(db_url: str, leader: str) -> list[tuple]:
    return [row for row in ticks(db_url, ENTRY) if row[3] == leader]


def test_a_leader_cut_off_is_replaced_sends_nothing_more_and_stands_by_when_back(
        app_db: str, beats_on_hosts) -> None:
    from config.celery import app

    # Given a per-second entry and two beats on two hosts, the leader having sent ticks
    result = CliRunner().invoke(schedule, ["add", ENTRY, "--task", "beat_test.record",
                                           "--every", "1", "--queue", QUEUE])
    assert result.exit_code == 0, result.output
    beats = [beats_on_hosts("one"), beats_on_hosts("two")]
    by_identity = {beat.identity: beat for beat in beats}

    def logs() -> str:
        return "\n".join(f"--- {b.identity} ---\n{b.output()[-3000:]}" for b in beats)

    first = wait_until(lambda: leader_application(app_db), 30, "a beat leader", logs)
    old = by_identity[first]
    (standby,) = (beat for beat in beats if beat is not old)
    wait_until(lambda: "standing by" in standby.output(), 30, "the other beat to stand by",
               logs)
    wait_until(lambda: len(_ticks_by(app_db, first)) >= 2, 30, "ticks from the leader", logs)

    # When the leader's host is cut off from the network
    old.host.cut()
    cut_at = datetime.now(UTC)
    cut = time.monotonic()

    # Then the standby leads within the promised time (plus slack for a loaded machine)
    wait_until(lambda: leader_application(app_db) == standby.identity,
               TAKEOVER_PROMISE + SLACK, "the standby to take over", logs)
    takeover = time.monotonic() - cut
    wait_until(lambda: len(_ticks_by(app_db, standby.identity)) >= 2, 30,
               "ticks from the new leader", logs)

    # When the old leader's link comes back
    mended = len(old.output())
    old.host.mend()

    # Then the old leader stands by (checked after the ticks, which say more when both
    # fail), and the new one keeps sending
    stood_by = _eventually(lambda: "standing by" in old.output()[mended:], 30)
    sent = len(_ticks_by(app_db, standby.identity))
    wait_until(lambda: len(_ticks_by(app_db, standby.identity)) >= sent + 3, 30,
               "more ticks from the new leader", logs)
    leader = leader_application(app_db)
    assert all(beat.process.poll() is None for beat in beats), logs()
    for beat in beats:
        beat.process.terminate()
        beat.process.wait(timeout=20)

    # Then the broker holds exactly one message per tick of the whole test: counted, not
    # collected
    fired = ticks(app_db, ENTRY)
    messages = drain(app, QUEUE)
    per_tick = Counter(headers["pgjobs_beat_due_at"] for headers in messages)
    assert set(per_tick.values()) == {1}, per_tick
    assert sorted(per_tick) == sorted(row[1].isoformat() for row in fired)
    assert Counter(headers["id"] for headers in messages) == Counter(row[2] for row in fired)
    # ... the old leader sent nothing once cut off, and only the two ever led
    assert all(row[4] is not None for row in fired), "a tick was claimed but not sent"
    assert all(row[4] <= cut_at for row in fired if row[3] == first), fired
    assert {row[3] for row in fired} == {first, standby.identity}, fired
    # ... and the old leader, back on the network, stood by while the new one led
    assert stood_by, f"the old leader never stood by after its link came back\n{logs()}"
    assert leader == standby.identity
    print(f"cut-off leader replaced after {takeover:.2f} s; {len(fired)} ticks, "
          f"{len(_ticks_by(app_db, first))} by the old leader")
