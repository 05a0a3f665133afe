"""The next runs of the schedule, soonest first (for ``pgjobs status``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from beat.slots import counting_from, slots_for
from beat.store import all_entries


@dataclass(frozen=True)
class NextRun:
    name: str
    task: str
    at: datetime


def next_runs(session: Session, now: datetime, limit: int = 5) -> list[NextRun]:
    """The next run of each enabled entry, soonest first, at most ``limit``; an overdue
    entry's run is its due time (in the past)."""
    runs = []
    for row in all_entries(session):
        task = row.task
        if not task.enabled:
            continue
        at = _next_run_at(task, now)
        if at is not None:
            runs.append(NextRun(task.name, task.task, at))
    return sorted(runs, key=lambda run: (run.at, run.name))[:limit]


def _next_run_at(task: object, now: datetime) -> datetime | None:
    try:
        slots = slots_for(task.schedule)  # type: ignore[attr-defined]
    except Exception:  # a broken row is skipped here; `pgjobs schedule list` shows it
        return None
    if slots is None:
        return None
    return slots.first_after(counting_from(slots, task.last_run_at, now))  # type: ignore[attr-defined]
