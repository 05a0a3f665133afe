"""What an entry is, before it is a row: validated schedule and entry specifications.

Every check happens here, before anything is written, so a bad entry writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from celery import schedules

from beat.slots import CATCH_UP_CHOICES, CatchUp
from config.settings import is_known_timezone


class SpecError(ValueError):
    """An entry specification is invalid; the message is one line naming the fix."""


@dataclass(frozen=True)
class CronSpec:
    """A crontab in ``timezone``; fields in crontab order (minute hour day month weekday)."""

    minute: str
    hour: str
    day_of_month: str
    month_of_year: str
    day_of_week: str
    timezone: str = "UTC"

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> CronSpec:
        """``"MIN HOUR DOM MON DOW"`` in ``timezone``; SpecError if either is malformed."""
        fields = expression.split()
        if len(fields) != 5:
            raise SpecError(f"cron expression {expression!r} must have 5 fields: "
                            "MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK, e.g. '0 4 * * *'")
        spec = cls(*fields, timezone=check_timezone(timezone))
        spec.crontab()
        return spec

    def crontab(self) -> schedules.crontab:
        try:
            return schedules.crontab(
                minute=self.minute, hour=self.hour, day_of_month=self.day_of_month,
                month_of_year=self.month_of_year, day_of_week=self.day_of_week)
        except (ValueError, TypeError) as error:
            raise SpecError(f"cron expression {self.expression!r} is invalid ({error}); "
                            "expected e.g. '0 4 * * *'") from None

    @property
    def expression(self) -> str:
        return " ".join((self.minute, self.hour, self.day_of_month, self.month_of_year,
                         self.day_of_week))


@dataclass(frozen=True)
class IntervalSpec:
    """Every ``seconds`` seconds."""

    seconds: int

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise SpecError(f"--every {self.seconds} must be a whole number of seconds >= 1")


@dataclass(frozen=True)
class ClockedSpec:
    """Once, at ``at`` (timezone-aware)."""

    at: datetime

    @classmethod
    def parse(cls, text: str, timezone: str, now: datetime) -> ClockedSpec:
        """An ISO-8601 time; naive times are read in ``timezone``. Must be in the future."""
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise SpecError(f"--at {text!r} is not an ISO-8601 time, "
                            "e.g. 2026-12-31T23:00:00+01:00") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(check_timezone(timezone)))
        if moment <= now:
            raise SpecError(f"--at {text!r} is in the past; give a future time")
        return cls(moment.astimezone(UTC))


Schedule = CronSpec | IntervalSpec | ClockedSpec


@dataclass(frozen=True)
class EntrySpec:
    """One schedule entry as an operator or the code declares it."""

    name: str
    task: str
    schedule: Schedule
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    queue: str | None = None
    catch_up: CatchUp = "once"
    description: str = ""

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("--task", self.task)):
            if not value.strip() or len(value) > 255:
                raise SpecError(f"{label} must be 1 to 255 characters")
        if self.catch_up not in CATCH_UP_CHOICES:
            raise SpecError(f"--catch-up must be one of {', '.join(CATCH_UP_CHOICES)}")


def check_timezone(name: str) -> str:
    """``name`` if it is a listed IANA time zone; SpecError otherwise."""
    if not is_known_timezone(name):
        raise SpecError(f"unknown time zone {name!r}; use an IANA name such as "
                        "'Europe/Paris' or 'UTC'")
    return name


def parse_json(option: str, text: str, kind: type) -> list | dict:
    """``text`` decoded as a JSON value of ``kind`` (list or dict); SpecError otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"{option} is not valid JSON ({error.msg} at column {error.colno})"
                        ) from None
    if not isinstance(value, kind):
        expected = "a JSON list, e.g. '[1, \"a\"]'" if kind is list else \
            "a JSON object, e.g. '{\"key\": 1}'"
        raise SpecError(f"{option} must be {expected}")
    return value

