"""Unit: due times under a controlled clock: DST transitions and the missed-run policy."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from beat_helpers import utc
from celery.schedules import crontab

from beat.slots import CronSlots, IntervalSlots, OnceSlots, plan

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
GRACE = 60.0


def run_clock(slots, start: datetime, end: datetime, step: timedelta, **policy) -> list:
    """Drive ``plan`` like a scheduler polling every ``step``; the due times it fired."""
    fired, last, now = [], start, start
    while now <= end:
        decision = plan(slots, last, now, grace=GRACE, **policy)
        if decision.action == "fire":
            fired.append(decision.due_at)
        if decision.action != "wait":
            last = decision.due_at
        now += step
    return fired


def fires_per_local_day(slots: CronSlots, first_day: datetime, days: int) -> Counter:
    start = first_day.astimezone(slots.zone).replace(hour=0, minute=0) - timedelta(minutes=1)
    fired = run_clock(slots, start.astimezone(ZoneInfo("UTC")),
                      start + timedelta(days=days), timedelta(minutes=1))
    return Counter(moment.astimezone(slots.zone).date().isoformat() for moment in fired)


@pytest.mark.parametrize(("zone", "hour", "minute", "transition"), [
    (PARIS, 2, 30, utc(2026, 3, 29)),   # 02:30 does not exist: clocks jump 02:00 -> 03:00
    (PARIS, 2, 30, utc(2026, 10, 25)),  # 02:30 happens twice: 03:00 -> 02:00
    (PARIS, 1, 30, utc(2026, 3, 29)),
    (PARIS, 1, 30, utc(2026, 10, 25)),
    (NEW_YORK, 2, 30, utc(2026, 3, 8, 12)),   # nonexistent in New York
    (NEW_YORK, 1, 30, utc(2026, 11, 1, 12)),  # repeated in New York
])
def test_daily_crontab_fires_once_per_day_across_dst(zone, hour, minute, transition) -> None:
    # Given a daily entry at a wall time near the transition
    slots = CronSlots(crontab(minute=minute, hour=hour), zone)

    # When a minute-by-minute clock runs from the day before to the day after
    per_day = fires_per_local_day(slots, transition - timedelta(days=1), 3)

    # Then it fired exactly once on each of the three days
    assert sorted(per_day.values()) == [1, 1, 1], per_day


def test_nonexistent_wall_time_fires_shifted_forward_by_the_gap() -> None:
    slots = CronSlots(crontab(minute=30, hour=2), PARIS)
    (moment,) = slots.on_day(datetime(2026, 3, 29).date())
    assert moment.astimezone(PARIS).isoformat() == "2026-03-29T03:30:00+02:00"


def test_repeated_wall_time_fires_at_its_first_occurrence() -> None:
    slots = CronSlots(crontab(minute=30, hour=1), NEW_YORK)
    (moment,) = slots.on_day(datetime(2026, 11, 1).date())
    assert moment.astimezone(NEW_YORK).isoformat() == "2026-11-01T01:30:00-04:00"


def test_hourly_crontab_fires_in_both_repeated_hours_and_once_in_the_short_day() -> None:
    # Given an hourly entry in Paris
    slots = CronSlots(crontab(minute=30), PARIS)
    # When the clock runs across both transition days
    autumn = fires_per_local_day(slots, utc(2026, 10, 25), 1)
    spring = fires_per_local_day(slots, utc(2026, 3, 29), 1)
    # Then the 25-hour day has 25 runs and the 23-hour day 23
    assert autumn["2026-10-25"] == 25
    assert spring["2026-03-29"] == 23


def test_missed_daily_runs_fire_once_with_catch_up_once() -> None:
    # Given a daily 04:00 entry last run three days ago (beat was down since)
    slots = CronSlots(crontab(minute=0, hour=4), ZoneInfo("UTC"))
    last, now = utc(2026, 6, 1, 4), utc(2026, 6, 4, 9)

    # When beat comes back
    decision = plan(slots, last, now, catch_up="once", grace=GRACE)

    # Then it fires once, for the latest missed slot, covering the three missed ones
    assert (decision.action, decision.due_at, decision.missed) == ("fire", utc(2026, 6, 4, 4), 3)
    assert plan(slots, decision.due_at, now, grace=GRACE).action == "wait"


def test_missed_runs_are_skipped_with_catch_up_skip() -> None:
    slots = CronSlots(crontab(minute=0, hour=4), ZoneInfo("UTC"))
    decision = plan(slots, utc(2026, 6, 1, 4), utc(2026, 6, 4, 9), catch_up="skip", grace=GRACE)
    assert (decision.action, decision.due_at) == ("skip", utc(2026, 6, 4, 4))
    assert plan(slots, decision.due_at, utc(2026, 6, 4, 9), grace=GRACE).wait == 19 * 3600


def test_a_run_late_by_less_than_the_grace_still_fires_with_catch_up_skip() -> None:
    # A failover of a few seconds is not downtime: the run is not dropped
    slots = CronSlots(crontab(minute=0, hour=4), ZoneInfo("UTC"))
    decision = plan(slots, utc(2026, 6, 3, 4), utc(2026, 6, 4, 4, 0, 8), catch_up="skip",
                    grace=GRACE)
    assert (decision.action, decision.due_at) == ("fire", utc(2026, 6, 4, 4))


def test_cron_starting_deadline_skips_a_stale_run_even_with_catch_up_once() -> None:
    slots = CronSlots(crontab(minute=0, hour=4), ZoneInfo("UTC"))
    stale = plan(slots, utc(2026, 6, 3, 4), utc(2026, 6, 4, 4, 10), catch_up="once",
                 grace=GRACE, deadline=300)
    fresh = plan(slots, utc(2026, 6, 3, 4), utc(2026, 6, 4, 4, 4), catch_up="once",
                 grace=GRACE, deadline=300)
    assert stale.action == "skip" and "beat_cron_starting_deadline" in stale.reason
    assert fresh.action == "fire"


def test_interval_after_downtime_fires_once_on_its_grid() -> None:
    # Given a 10-second entry whose last run was 95 s ago
    slots = IntervalSlots(timedelta(seconds=10))
    last = utc(2026, 6, 1, 12)
    decision = plan(slots, last, last + timedelta(seconds=95), grace=GRACE)
    # Then one run stands for the nine missed, on the latest slot, and the next is 10 s later
    assert (decision.action, decision.missed) == ("fire", 9)
    assert decision.due_at == last + timedelta(seconds=90)
    assert plan(slots, decision.due_at, last + timedelta(seconds=95), grace=GRACE).wait == 5


def test_one_off_missed_during_downtime_runs_once_or_is_skipped() -> None:
    slots = OnceSlots(utc(2026, 6, 1, 12))
    now = utc(2026, 6, 2, 12)
    assert plan(slots, utc(1970, 1, 1), now, catch_up="once", grace=GRACE).action == "fire"
    assert plan(slots, utc(1970, 1, 1), now, catch_up="skip", grace=GRACE).action == "skip"
    assert plan(slots, utc(2026, 6, 1, 12), now, grace=GRACE).action == "wait"


def test_days_down_with_an_every_minute_crontab_fire_once() -> None:
    # Given an every-minute entry, down for five days across the spring transition
    slots = CronSlots(crontab(), PARIS)
    last = utc(2026, 3, 26, 12)
    decision = plan(slots, last, last + timedelta(days=5), grace=GRACE)
    # Then one run stands for every real minute missed (the skipped wall hour adds none)
    assert (decision.action, decision.missed) == ("fire", 5 * 1440)
    assert decision.due_at == last + timedelta(days=5)
