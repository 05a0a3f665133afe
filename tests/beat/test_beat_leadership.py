"""Integration: leadership over a real PostgreSQL, with in-process schedulers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from beat_helpers import leader_application, terminate_leader_connection, ticks
from click.testing import CliRunner
from sqlalchemy.exc import SQLAlchemyError

from beat.cli import schedule
from beat.leadership import LostLeadership
from beat.ticks import Tick
from tests.polling import wait_until

# Entries count from their creation (real time); these tests then move the clock on.
NOW = datetime.now(UTC)


def _add_every_minute(name: str = "minutely") -> None:
    result = CliRunner().invoke(schedule, ["add", name, "--task", "beat_test.record",
                                           "--every", "60", "--queue", "beat-leadership"])
    assert result.exit_code == 0, result.output


def test_one_of_two_schedulers_leads(make_scheduler, app_db: str) -> None:
    a, b = make_scheduler("beat-a"), make_scheduler("beat-b")
    a.tick()
    b.tick()
    assert (a.is_leader, b.is_leader) == (True, False)
    assert leader_application(app_db) == "beat-a"


def test_standby_takes_over_when_the_leader_connection_dies(
        make_scheduler, app_db: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given a leader and a standby
    a, b = make_scheduler("beat-a"), make_scheduler("beat-b")
    a.tick()
    b.tick()

    # When the leader's lock connection is terminated by the server
    assert terminate_leader_connection(app_db) == "beat-a"

    # Then the standby takes the lock on its next passes (it retries every second)
    with caplog.at_level(logging.INFO, logger="beat.leadership"):
        wait_until(lambda: b.tick() is not None and b.is_leader, 10, "the standby to lead")
        # ... and the old leader notices on its next pass, stays a standby, and says so
        a.tick()
    assert leader_application(app_db) == "beat-b"
    assert not a.is_leader
    assert "beat-a lost leadership" in caplog.text
    assert "beat-b is now the leader" in caplog.text


def test_leader_that_lost_its_lock_sends_nothing(make_scheduler, app_db: str) -> None:
    # Given a leader that has dispatched a due entry
    _add_every_minute()
    a, b = make_scheduler("beat-a"), make_scheduler("beat-b")
    a.clock = b.clock = lambda: NOW + timedelta(days=1)
    a.tick()
    assert [row[3] for row in ticks(app_db, "minutely")] == ["beat-a"]

    # When its connection dies and, before it noticed, it tries to claim the next tick
    terminate_leader_connection(app_db)
    sent: list[str] = []
    tick = Tick("minutely", NOW + timedelta(days=2), "id-1", None)
    with pytest.raises((SQLAlchemyError, LostLeadership)):
        a._ledger.fire(tick, lambda: sent.append("sent"))

    # Then nothing was sent nor claimed, and after the standby took over only it dispatches
    assert sent == []
    wait_until(lambda: b.tick() is not None and b.is_leader, 10, "the standby to lead")
    a.clock = b.clock = lambda: NOW + timedelta(days=3)
    a.tick()
    b.tick()
    assert [row[3] for row in ticks(app_db, "minutely")] == ["beat-a", "beat-b"]
