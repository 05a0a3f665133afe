"""Integration: leadership over a real PostgreSQL, with in-process schedulers."""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from beat_helpers import (
    expire_lease,
    leader_application,
    lease,
    rows,
    terminate_leader_connection,
    ticks,
)
from click.testing import CliRunner
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from beat.cli import schedule
from beat.leadership import Leadership, LostLeadership
from beat.ticks import Tick
from config.urls import sqlalchemy_url
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


# --- the leader lease: a leader that stops renewing is deposed --------------------------------

@pytest.fixture
def plain_role(db_url: str, pg_server_url: str) -> Iterator[str]:
    """A SQLAlchemy URL on the test database for a new role that is not a superuser and may
    only use the lease table (what leadership touches); the role is dropped afterwards."""
    name = f"pgjobs_beat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    role = sql.Identifier(name)
    rows(db_url, sql.SQL("GRANT SELECT, INSERT, UPDATE ON pgjobs_beat_leader TO {}").format(role))
    yield sqlalchemy_url(make_url(db_url).set(username=name, password=None)
                         .render_as_string(hide_password=False))
    rows(db_url, sql.SQL("DROP OWNED BY {}").format(role))
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE {}").format(role))


@pytest.fixture
def leaderships() -> Iterator[list[Leadership]]:
    made: list[Leadership] = []
    yield made
    for leadership in made:
        leadership.release()


def test_a_standby_of_the_same_role_deposes_a_leader_whose_lease_expired(
        plain_role: str, db_url: str, leaderships: list[Leadership],
        caplog: pytest.LogCaptureFixture) -> None:
    # Given a leader and a standby, both a role without superuser rights
    a, b = Leadership(plain_role, "beat-a"), Leadership(plain_role, "beat-b")
    leaderships += [a, b]
    caplog.set_level(logging.INFO, logger="beat.leadership")
    assert (a.confirm(), b.confirm()) == (True, False)
    # ... and while the leader's lease is live, the standby leaves it alone
    assert b.confirm() is False
    assert a.confirm() is True
    assert lease(db_url)[0] == "beat-a"

    # When the leader stops renewing (frozen) and its lease expires
    expire_lease(db_url)

    # Then on its next pass the standby ends the leader's session and leads
    assert b.confirm() is True
    assert lease(db_url)[0] == "beat-b"
    assert leader_application(db_url) == "beat-b"
    assert "beat-b ended the session of beat-a" in caplog.text
    # ... and the old leader, resuming, finds it lost the lead and says so
    assert a.confirm() is False
    assert "beat-a lost leadership" in caplog.text


def test_a_standby_that_may_not_end_the_leader_says_so_once_and_the_leader_steps_down(
        plain_role: str, db_url: str, leaderships: list[Leadership],
        caplog: pytest.LogCaptureFixture) -> None:
    # Given a leader connected as a superuser and a standby that is not one
    a = Leadership(sqlalchemy_url(db_url), "beat-super")
    b = Leadership(plain_role, "beat-plain")
    leaderships += [a, b]
    assert (a.confirm(), b.confirm()) == (True, False)

    # When the leader's lease expires
    expire_lease(db_url)

    # Then the standby cannot end its session: it says why, once, and does not lead
    with caplog.at_level(logging.ERROR, logger="beat.leadership"):
        assert (b.confirm(), b.confirm()) == (False, False)
    assert caplog.text.count("cannot end the session") == 1, caplog.text
    assert "pg_signal_backend" in caplog.text
    # ... and the old leader, resuming, steps down by itself, so the standby can lead once
    # the server has ended the session it closed
    assert a.confirm() is False
    wait_until(b.confirm, 10, "the standby to lead")


def test_a_deposed_leader_claims_nothing(make_scheduler, app_db: str) -> None:
    # Given a leader that has dispatched a due entry, and a standby
    _add_every_minute()
    a, b = make_scheduler("beat-a"), make_scheduler("beat-b")
    a.clock = b.clock = lambda: NOW + timedelta(days=1)
    a.tick()
    b.tick()
    assert [row[3] for row in ticks(app_db, "minutely")] == ["beat-a"]

    # When its lease expires, the standby takes over, and the old leader then tries a claim
    expire_lease(app_db)
    b.tick()
    assert b.is_leader
    sent: list[str] = []
    tick = Tick("minutely", NOW + timedelta(days=2), "id-1", None)
    with pytest.raises((SQLAlchemyError, LostLeadership)):
        a._ledger.fire(tick, lambda: sent.append("sent"))

    # Then nothing was sent nor claimed by it, and only the new leader dispatches
    assert sent == []
    a.clock = b.clock = lambda: NOW + timedelta(days=3)
    a.tick()
    b.tick()
    assert [row[3] for row in ticks(app_db, "minutely")] == ["beat-a", "beat-b"]
    assert b.is_leader and not a.is_leader


def test_a_leader_whose_lease_lapsed_claims_nothing_though_its_session_lives(
        make_scheduler, app_db: str) -> None:
    # Given a leader that has dispatched a due entry, and no standby
    _add_every_minute()
    a = make_scheduler("beat-a")
    a.clock = lambda: NOW + timedelta(days=1)
    a.tick()
    assert len(ticks(app_db, "minutely")) == 1

    # When its lease lapses (nobody ended its session) and it tries to claim the next tick
    expire_lease(app_db)
    sent: list[str] = []
    tick = Tick("minutely", NOW + timedelta(days=2), "id-1", None)
    with pytest.raises(LostLeadership):
        a._ledger.fire(tick, lambda: sent.append("sent"))

    # Then the claim failed: nothing sent, nothing claimed
    assert sent == []
    assert len(ticks(app_db, "minutely")) == 1


@pytest.mark.timeout(30)
def test_a_leader_told_to_stop_in_the_middle_of_a_query_lets_go_of_the_lock(
        db_url: str, leaderships: list[Leadership]) -> None:
    # Given a leader running a query on its lock connection
    a = Leadership(sqlalchemy_url(db_url), "beat-a")
    leaderships.append(a)
    assert a.confirm()

    def stop(signum: int, frame: object) -> None:  # what `celery beat` does on SIGTERM
        a.release()
        raise SystemExit

    # When a signal arrives during that query, and its handler releases the leadership
    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        with pytest.raises(SystemExit):
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            a.connection.execute(text("SELECT pg_sleep(10)"))
    finally:
        signal.signal(signal.SIGUSR1, previous)

    # Then the handler returned (it did not wait for the query) and the lock is free
    wait_until(lambda: leader_application(db_url) is None, 10, "the lock to be freed")
