"""Integration: a leading scheduler over a real database, driven pass by pass.

Each ``tick()`` is one pass of ``celery beat``'s loop, which runs at least every
``beat_max_loop_interval`` (5 s), so "seen on the next pass" is "seen within the interval".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from beat_helpers import drain, rows, ticks, utc
from click.testing import CliRunner

from beat.cli import schedule
from beat.ticks import Tick
from config.urls import sqlalchemy_url

QUEUE = "beat-scheduler"


def invoke(*args: str) -> None:
    result = CliRunner().invoke(schedule, list(args))
    assert result.exit_code == 0, result.output


def add(name: str, *how: str) -> None:
    invoke("add", name, "--task", "beat_test.record", "--queue", QUEUE, *how)


@pytest.fixture
def created() -> datetime:
    """When the test's entries are created: taken per test, as `--at` refuses past times."""
    return datetime.now(UTC)


@pytest.fixture
def leader(make_scheduler, app_db: str, created: datetime):
    """A scheduler that leads, with its clock one hour ahead so interval entries are due."""
    scheduler = make_scheduler("beat-leader")
    scheduler.clock = lambda: created + timedelta(hours=1)
    scheduler.tick()
    assert scheduler.is_leader
    return scheduler


def names(scheduler) -> set[str]:
    return set(scheduler.schedule) - {"delete_old_data"}


def test_runtime_edits_are_picked_up_on_the_next_pass(leader, app_db: str) -> None:
    # Given a running leader; when entries are added, it sees them on its next pass
    add("a", "--every", "60")
    add("b", "--every", "60")
    wait = leader.tick()
    assert names(leader) == {"a", "b"}
    assert wait <= leader.max_interval == 5
    # ... a bulk pause of both is seen too (the CLI bumps the change marker itself)
    invoke("pause", "a", "b")
    leader.tick()
    assert names(leader) == set()
    # ... as are a resume and a removal
    invoke("resume", "a")
    leader.tick()
    assert names(leader) == {"a"}
    invoke("remove", "a")
    leader.tick()
    assert names(leader) == set()


def test_edit_of_an_entry_schedule_is_applied(leader, app_db: str) -> None:
    add("c", "--every", "60")
    leader.tick()
    rows(app_db, "UPDATE celery_intervalschedule SET every = 7")
    rows(app_db, "UPDATE celery_periodictaskchanged SET last_update = clock_timestamp()")
    leader.tick()
    assert leader.schedule["c"].slots.every == timedelta(seconds=7)


def test_a_due_entry_is_sent_once_and_its_progress_persisted(
        any_transport, leader, app_db: str) -> None:
    app = any_transport
    # Given an hourly-due entry an hour and a bit overdue (60 missed minutes)
    add("d", "--every", "60")
    # When the leader passes twice at the same instant
    leader.tick()
    leader.tick()
    # Then one tick was claimed and sent, for the latest slot, and last_run_at persisted
    fired = ticks(app_db, "d")
    assert len(fired) == 1 and fired[0][4] is not None
    assert rows(app_db, "SELECT last_run_at, total_run_count FROM celery_periodictask "
                "WHERE name = 'd'") == [(fired[0][1], 1)]
    assert [m["id"] for m in drain(app, QUEUE)] == [fired[0][2]]


def test_a_tick_claimed_elsewhere_is_not_sent_again(
        make_scheduler, app_db: str, created: datetime) -> None:
    from config.celery import app

    # Given a daily entry and a tick for today's slot already claimed by another leader
    add("e", "--cron", "0 4 * * *", "--timezone", "UTC")
    slot = (created + timedelta(days=1)).replace(hour=4, minute=0, second=0, microsecond=0)
    rows(app_db, "INSERT INTO pgjobs_beat_tick (entry_name, due_at, task_id, leader, sent_at) "
         "VALUES ('e', %(slot)s, 'earlier', 'beat-old', now())", {"slot": slot})

    # When a leader that does not know about it passes after the slot
    scheduler = make_scheduler("beat-new")
    scheduler.clock = lambda: slot + timedelta(seconds=3)
    scheduler.tick()

    # Then it sends nothing for that slot and moves on to the next one
    assert [row[3] for row in ticks(app_db, "e")] == ["beat-old"]
    assert drain(app, QUEUE, idle=1.0) == []
    assert scheduler.schedule["e"].next_run() == slot + timedelta(days=1)


@pytest.mark.parametrize(("catch_up", "sent"), [("once", 1), ("skip", 0)])
def test_downtime_over_several_due_times(make_scheduler, app_db: str, catch_up, sent) -> None:
    # Given a daily 04:00 entry that last ran three days before beat comes back
    add("f", "--cron", "0 4 * * *", "--timezone", "UTC", "--catch-up", catch_up)
    rows(app_db, "UPDATE celery_periodictask SET last_run_at = %(t)s, total_run_count = 1 "
         "WHERE name = 'f'", {"t": utc(2030, 6, 1, 4)})
    scheduler = make_scheduler()
    scheduler.clock = lambda: utc(2030, 6, 4, 9)

    # When it passes
    scheduler.tick()
    scheduler.tick()

    # Then the entry fired once (catch_up=once) or not at all (skip), and counts from today
    assert len(ticks(app_db, "f")) == sent
    assert rows(app_db, "SELECT last_run_at FROM celery_periodictask WHERE name = 'f'") == [
        (utc(2030, 6, 4, 4),)]



def test_a_one_off_entry_runs_once_then_is_done(
        leader, app_db: str, created: datetime) -> None:
    # Given an entry for one minute from now, and a leader whose clock is an hour ahead
    at = (created + timedelta(minutes=1)).isoformat()
    add("once", "--at", at)
    # When it passes several times
    for _ in range(3):
        leader.tick()
    # Then it ran once and is disabled, shown as done
    assert len(ticks(app_db, "once")) == 1
    assert rows(app_db, "SELECT enabled, total_run_count FROM celery_periodictask "
                "WHERE name = 'once'") == [(False, 1)]
    listed = CliRunner().invoke(schedule, ["list"]).output
    assert [line.split()[-1] for line in listed.splitlines() if line.startswith("once")] == [
        "done"]

_BROKER_KEYS = ("broker_url", "broker_transport", "broker_transport_options")


def _use_transport(app, db_url: str, transport: str) -> None:
    if transport == "pgjobs":
        app.conf.update(broker_url=db_url, broker_transport="broker.transport:Transport")
    else:  # kombu's own SQLAlchemy transport: publishing can't join our transaction
        app.conf.update(broker_url="sqla+" + sqlalchemy_url(db_url), broker_transport=None,
                        broker_transport_options={})
    app._after_fork()


@pytest.fixture(params=["pgjobs", "sqla"])
def any_transport(request, app_db: str):
    """The app publishing through either transport, whatever config says."""
    from config.celery import app

    saved = {key: app.conf[key] for key in _BROKER_KEYS}
    _use_transport(app, app_db, request.param)
    yield app
    app.conf.update(saved)
    app._after_fork()


@pytest.fixture
def pgjobs_transport(app_db: str):
    """The app publishing through pgjobs' PostgreSQL transport, whatever config says."""
    from config.celery import app

    saved = {key: app.conf[key] for key in _BROKER_KEYS}
    _use_transport(app, app_db, "pgjobs")
    yield app
    app.conf.update(saved)
    app._after_fork()


def test_with_pgjobs_transport_tick_and_message_commit_together(
        make_scheduler, pgjobs_transport, app_db: str, created: datetime) -> None:
    # Given a leader publishing through pgjobs' transport, and a due entry
    add("g", "--every", "60")
    scheduler = make_scheduler()
    scheduler.clock = lambda: created + timedelta(hours=1)

    # When it passes, the tick and its message are committed in one transaction
    scheduler.tick()
    (fired,) = ticks(app_db, "g")
    assert [m["id"] for m in drain(pgjobs_transport, QUEUE)] == [fired[2]]

    # ... and a claim whose transaction fails after publishing leaves neither behind
    entry = scheduler.schedule["g"]
    tick = Tick("g", fired[1] + timedelta(minutes=1), "never-committed", fired[1])

    def publish_then_fail() -> None:
        scheduler._send(entry, tick)
        raise RuntimeError("the claiming transaction fails after the publish")

    with pytest.raises(RuntimeError):
        scheduler._ledger.fire(tick, publish_then_fail)
    assert len(ticks(app_db, "g")) == 1
    assert drain(pgjobs_transport, QUEUE, idle=1.0) == []


def test_an_entry_that_never_ran_keeps_its_slot_across_a_leader_change(
        make_scheduler, app_db: str) -> None:
    # Given a daily 04:00 entry without a last run, as sqlalchemy-celery-beat's API writes one
    add("h", "--cron", "0 4 * * *", "--timezone", "UTC")
    rows(app_db, "UPDATE celery_periodictask SET last_run_at = NULL WHERE name = 'h'")
    slot = utc(2030, 6, 4, 4)
    # ... and a leader that loaded it a minute before its slot, then went away
    first = make_scheduler("beat-first")
    first.clock = lambda: slot - timedelta(minutes=1)
    first.tick()
    assert first.is_leader
    first.close()

    # When another leader takes over just after the slot
    second = make_scheduler("beat-second")
    second.clock = lambda: slot + timedelta(seconds=5)
    second.tick()

    # Then it sends the 04:00 run instead of counting from its own start and skipping it
    assert [(row[1], row[3]) for row in ticks(app_db, "h")] == [(slot, "beat-second")]


def test_a_pause_made_while_a_publish_fails_is_kept(leader, app_db: str,
                                                    created: datetime) -> None:
    from beat.ticks import TickLedger

    # Given an entry, and a leader publishing outside the claiming transaction
    add("p", "--every", "60")
    ledger = TickLedger(leader.leadership, in_transaction=None)
    tick = Tick("p", created + timedelta(days=1), "never-sent", created)

    # When the operator pauses the entry while the publish of its tick is failing
    def pause_then_fail() -> None:
        invoke("pause", "p")
        raise RuntimeError("the broker is down")

    with pytest.raises(RuntimeError):
        ledger.fire(tick, pause_then_fail)

    # Then the claim was given back, and the entry stays paused
    assert ticks(app_db, "p") == []
    assert rows(app_db, "SELECT enabled FROM celery_periodictask WHERE name = 'p'") == [
        (False,)]
