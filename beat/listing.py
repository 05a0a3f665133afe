"""The text of ``pgjobs schedule list``."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from celery.utils.time import maybe_make_aware
from sqlalchemy_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)

from beat.slots import counting_from, slots_for
from beat.store import Row

COLUMNS = ("NAME", "TASK", "SCHEDULE", "ENABLED", "LAST RUN", "NEXT RUN")


def table(rows: list[Row], now: datetime) -> str:
    """Aligned columns, one line per entry; a hint when there is none."""
    if not rows:
        return "no schedule entries; add one with `pgjobs schedule add`"
    lines = [COLUMNS, *(_cells(row, now) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _cells(row: Row, now: datetime) -> tuple[str, ...]:
    task = row.task
    zone = _zone(task)
    last = _when(task.last_run_at, zone) if task.total_run_count else "never"
    return (task.name, task.task, describe(task, row.catch_up), "yes" if task.enabled else "no",
            last, _next_run(task, now, zone))


def describe(task: PeriodicTask, catch_up: str = "once") -> str:
    """The schedule in words: ``0 4 * * * Europe/Paris``, ``every 2s``, ``at ...``."""
    model = task.schedule_model
    if isinstance(model, CrontabSchedule):
        text = " ".join((model.minute, model.hour, model.day_of_month, model.month_of_year,
                         model.day_of_week)) + f" {model.timezone}"
    elif isinstance(model, IntervalSchedule):
        text = f"every {model.every}{_unit(model.period)}"
    elif isinstance(model, ClockedSchedule):
        text = f"at {_when(model.clocked_time, UTC)}"
    else:
        text = repr(model)
    return text if catch_up == "once" else f"{text} (catch-up skip)"


def _unit(period: object) -> str:
    value = getattr(period, "value", period)
    return {"seconds": "s", "minutes": "min", "hours": "h", "days": "d"}.get(value, value)


def _zone(task: PeriodicTask) -> ZoneInfo:
    model = task.schedule_model
    return ZoneInfo(model.timezone) if isinstance(model, CrontabSchedule) else ZoneInfo("UTC")


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    if moment is None:
        return "-"
    return maybe_make_aware(moment).astimezone(zone).isoformat(timespec="minutes")


def _next_run(task: PeriodicTask, now: datetime, zone: ZoneInfo) -> str:
    if not task.enabled:
        return "done" if task.one_off and task.total_run_count else "paused"
    try:
        slots = slots_for(task.schedule)
    except Exception:  # a broken row is shown, not fatal
        return "invalid schedule"
    if slots is None:
        return "-"
    upcoming = slots.first_after(counting_from(slots, task.last_run_at, now))
    if upcoming is None:
        return "done"
    return "now (overdue)" if upcoming <= now else _when(upcoming, zone)
