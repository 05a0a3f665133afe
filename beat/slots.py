"""When an entry is due: its schedule's slots as UTC instants, and the missed-run policy.

Pure functions of the time passed in, so tests drive them with any clock.

Crontab slots are computed on the wall clock of the entry's time zone:

- a wall time that does not exist (spring forward: 02:30 in Paris on 2026-03-29) fires
  once, shifted forward by the gap (03:30 CEST), as cron does;
- a wall time that happens twice (fall back: 02:30 in Paris on 2026-10-25) fires once, at
  its first occurrence, unless the hour field is ``*``: an hourly entry fires in both
  repeated hours, since they are distinct hours of real time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from celery import schedules
from celery.utils.time import maybe_make_aware
from sqlalchemy_celery_beat.clockedschedule import clocked

# How far ahead or back a crontab is searched: covers "29 February" with room to spare.
_SEARCH_DAYS = 366 * 9
# Missed slots are counted for the log up to this many.
_COUNT_CAP = 10_000
DISTANT_PAST = datetime(1970, 1, 1, tzinfo=UTC)


class Slots(Protocol):
    """The instants at which a schedule wants to run."""

    def first_after(self, moment: datetime) -> datetime | None:
        """The first slot strictly after ``moment`` (None: never again)."""

    def latest_until(self, due: datetime, now: datetime) -> datetime:
        """The last slot in ``[due, now]``; ``due`` is a slot at or before ``now``."""

    def count(self, due: datetime, latest: datetime) -> int:
        """How many slots lie in ``[due, latest]``."""


@dataclass(frozen=True)
class IntervalSlots:
    """Every ``every``, counted from the last run."""

    every: timedelta

    def first_after(self, moment: datetime) -> datetime | None:
        return moment + self.every

    def latest_until(self, due: datetime, now: datetime) -> datetime:
        return due + self.every * ((now - due) // self.every)

    def count(self, due: datetime, latest: datetime) -> int:
        return (latest - due) // self.every + 1


@dataclass(frozen=True)
class OnceSlots:
    """A single instant (a clocked, one-off entry)."""

    at: datetime

    def first_after(self, moment: datetime) -> datetime | None:
        return self.at if moment < self.at else None

    def latest_until(self, due: datetime, now: datetime) -> datetime:
        return due

    def count(self, due: datetime, latest: datetime) -> int:
        return 1


@dataclass(frozen=True)
class EstimateSlots:
    """Any other Celery schedule (solar): trust its own estimate of the next run."""

    schedule: schedules.BaseSchedule

    def first_after(self, moment: datetime) -> datetime | None:
        now = self.schedule.maybe_make_aware(self.schedule.now())
        return now + self.schedule.remaining_estimate(moment)

    def latest_until(self, due: datetime, now: datetime) -> datetime:
        return due

    def count(self, due: datetime, latest: datetime) -> int:
        return 1


@dataclass(frozen=True)
class CronSlots:
    """A crontab read on the wall clock of ``zone``."""

    cron: schedules.crontab
    zone: ZoneInfo

    def first_after(self, moment: datetime) -> datetime | None:
        start = moment.astimezone(self.zone).date() - timedelta(days=1)
        for offset in range(_SEARCH_DAYS):
            # A gap-shifted slot can cross midnight: look at two days at once.
            later = [s for s in self._days(start + timedelta(days=offset), 2) if s > moment]
            if later:
                return min(later)
        return None

    def latest_until(self, due: datetime, now: datetime) -> datetime:
        start = now.astimezone(self.zone).date() + timedelta(days=1)
        for offset in range(_SEARCH_DAYS):
            earlier = [s for s in self._days(start - timedelta(days=offset + 1), 2) if s <= now]
            if earlier:
                return max(earlier)
        return due

    def count(self, due: datetime, latest: datetime) -> int:
        seen, day = 0, due.astimezone(self.zone).date()
        last_day = latest.astimezone(self.zone).date()
        while day <= last_day and seen < _COUNT_CAP:
            seen += sum(1 for slot in self.on_day(day) if due <= slot <= latest)
            day += timedelta(days=1)
        return min(seen, _COUNT_CAP)

    def _days(self, first: date, days: int) -> list[datetime]:
        return [s for n in range(days) for s in self.on_day(first + timedelta(days=n))]

    def on_day(self, day: date) -> list[datetime]:
        """The UTC instants this crontab fires on local calendar ``day``, sorted."""
        cron = self.cron
        weekday = (day.weekday() + 1) % 7  # cron counts from Sunday = 0
        if day.month not in cron.month_of_year or day.day not in cron.day_of_month:
            return []
        if weekday not in cron.day_of_week:
            return []
        every_hour = len(cron.hour) == 24
        found: set[datetime] = set()
        for hour in cron.hour:
            for minute in cron.minute:
                found.update(wall_to_utc(datetime.combine(day, time(hour, minute)), self.zone,
                                         both_folds=every_hour))
        return sorted(found)


def wall_to_utc(wall: datetime, zone: ZoneInfo, *, both_folds: bool = False) -> list[datetime]:
    """UTC instants of naive wall time ``wall`` in ``zone``: one, or two for a repeated
    wall time when ``both_folds``. A wall time in a gap maps forward by the gap."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    instants = [first.astimezone(UTC)]
    repeated = first.utcoffset() != second.utcoffset() and _exists(second)
    if both_folds and repeated:
        instants.append(second.astimezone(UTC))
    return instants


def _exists(local: datetime) -> bool:
    back = local.astimezone(UTC).astimezone(local.tzinfo)
    return back.replace(tzinfo=None) == local.replace(tzinfo=None)


def slots_for(schedule: object) -> Slots | None:
    """The slots of a schedule as sqlalchemy-celery-beat builds it from a row."""
    if isinstance(schedule, clocked):
        return OnceSlots(schedule.clocked_time.astimezone(UTC))
    if isinstance(schedule, schedules.crontab):
        return CronSlots(schedule, getattr(schedule, "tz", None) or ZoneInfo("UTC"))
    if isinstance(schedule, schedules.schedule):
        return IntervalSlots(schedule.run_every)
    if isinstance(schedule, schedules.BaseSchedule):
        return EstimateSlots(schedule)
    return None


def counting_from(slots: Slots | None, stored: datetime | None, now: datetime) -> datetime:
    """Where an entry counts its slots from: its stored last run; without one, the start of
    time for a one-off (so a run missed during downtime still happens once), else ``now``."""
    if stored is not None:
        return maybe_make_aware(stored).astimezone(UTC)
    return DISTANT_PAST if isinstance(slots, OnceSlots) else now


CatchUp = Literal["once", "skip"]
CATCH_UP_CHOICES: tuple[CatchUp, ...] = ("once", "skip")


@dataclass(frozen=True)
class Plan:
    """What to do with an entry now.

    ``wait``: nothing due, check again in ``wait`` seconds. ``fire``: send the tick of slot
    ``due_at``. ``skip``: advance to ``due_at`` without sending. ``missed`` counts the slots
    the decision covers (more than one after downtime)."""

    action: Literal["wait", "fire", "skip"]
    due_at: datetime | None = None
    wait: float = math.inf
    missed: int = 0
    reason: str = ""


def plan(slots: Slots, last_run_at: datetime, now: datetime, *, catch_up: CatchUp = "once",
         grace: float, deadline: float | None = None) -> Plan:
    """Decide for one entry whose last slot (fired or skipped) was ``last_run_at``.

    Several missed slots collapse into one decision on the latest of them. ``catch_up=once``
    fires it; ``skip`` fires it only if it is at most ``grace`` seconds late. ``deadline``
    (Celery's ``beat_cron_starting_deadline``, crontabs only) skips a slot later than that.
    """
    due = slots.first_after(last_run_at)
    if due is None:
        return Plan("wait")
    if due > now:
        return Plan("wait", wait=(due - now).total_seconds())
    latest = slots.latest_until(due, now)
    missed = slots.count(due, latest)
    late = (now - latest).total_seconds()
    if deadline is not None and late > deadline:
        return Plan("skip", latest, missed=missed,
                    reason=f"{late:.0f} s late, past beat_cron_starting_deadline")
    if catch_up == "skip" and late > grace:
        return Plan("skip", latest, missed=missed, reason=f"{late:.0f} s late, catch_up=skip")
    return Plan("fire", latest, missed=missed)
