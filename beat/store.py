"""The schedule in PostgreSQL: sqlalchemy-celery-beat's tables plus pgjobs' policy table.

Every write runs in one transaction and bumps ``celery_periodictaskchanged`` itself, so
each running beat reloads within ``beat_max_loop_interval``, bulk changes included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    Period,
    PeriodicTask,
)

from beat import queries
from beat.specs import ClockedSpec, CronSpec, EntrySpec, IntervalSpec

# sqlalchemy-celery-beat's models name a schema placeholder; pgjobs keeps them in the default.
SCHEMA_MAP = {"celery_schema": None}
_SYNC_LOCK_KEYS = {"key1": 0x70676A6F, "key2": 0x73796E63}  # "pgjo", "sync"


# Every table beat reads or writes, created by the migrations.
BEAT_TABLES = ("celery_periodictask", "celery_periodictaskchanged", "pgjobs_beat_policy",
               "pgjobs_beat_tick", "pgjobs_beat_leader")


class UnknownEntry(LookupError):
    """A named entry does not exist."""


class DuplicateEntry(LookupError):
    """An entry of that name exists already."""


def create_engine(sqlalchemy_url: str) -> sa.Engine:
    """An engine for the schedule tables: no pool (beat and the CLI write rarely)."""
    # No server-side prepared statements, so that it works through a transaction-pooling
    # PgBouncer.
    engine = sa.create_engine(sqlalchemy_url, poolclass=sa.NullPool,
                              connect_args={"prepare_threshold": None})
    return engine.execution_options(schema_translate_map=SCHEMA_MAP)


def missing_tables(engine: sa.Engine) -> list[str]:
    """The tables of :data:`BEAT_TABLES` the database lacks (all present once migrated)."""
    with engine.connect() as connection:
        return list(connection.scalars(queries.MISSING_TABLES, {"names": list(BEAT_TABLES)}))


@contextmanager
def transaction(engine: sa.Engine) -> Iterator[Session]:
    """One ORM session in one transaction, committed on success."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def bump_change_marker(session: Session) -> None:
    session.execute(queries.BUMP_CHANGE_MARKER)


def add_entries(session: Session, specs: Iterable[EntrySpec], *, only_missing: bool) -> list[str]:
    """Insert ``specs``; with ``only_missing`` existing names are left as they are, otherwise
    an existing name raises :class:`DuplicateEntry`. Returns the names inserted."""
    specs = list(specs)
    session.execute(queries.SYNC_LOCK, _SYNC_LOCK_KEYS)
    existing = set(session.scalars(queries.EXISTING_NAMES, {"names": [s.name for s in specs]}))
    if existing and not only_missing:
        raise DuplicateEntry(f"an entry named {sorted(existing)[0]!r} exists already; "
                             "remove it first or choose another name")
    added = [_insert(session, spec) for spec in specs if spec.name not in existing]
    if added:
        bump_change_marker(session)
    return added


def _insert(session: Session, spec: EntrySpec) -> str:
    task = PeriodicTask(
        name=spec.name, task=spec.task, args=json.dumps(spec.args),
        kwargs=json.dumps(spec.kwargs), queue=spec.queue, headers="{}",
        one_off=isinstance(spec.schedule, ClockedSpec), enabled=True,
        # Counting starts now: a new entry does not catch up on runs before it existed.
        last_run_at=datetime.now(UTC), description=spec.description,
    )
    task.schedule_model = _schedule_row(session, spec.schedule)
    session.add(task)
    session.flush()
    session.execute(queries.SET_CATCH_UP, {"task_id": task.id, "catch_up": spec.catch_up})
    return spec.name


def _schedule_row(session: Session, schedule: CronSpec | IntervalSpec | ClockedSpec) -> object:
    if isinstance(schedule, CronSpec):
        model, fields = CrontabSchedule, {
            "minute": schedule.minute, "hour": schedule.hour,
            "day_of_month": schedule.day_of_month, "month_of_year": schedule.month_of_year,
            "day_of_week": schedule.day_of_week, "timezone": schedule.timezone}
    elif isinstance(schedule, IntervalSpec):
        model, fields = IntervalSchedule, {"every": schedule.seconds, "period": Period.SECONDS}
    else:
        model, fields = ClockedSchedule, {"clocked_time": schedule.at}
    row = session.scalars(sa.select(model).filter_by(**fields).limit(1)).first()
    if row is None:
        row = model(**fields)
        session.add(row)
        session.flush()
    return row


def _require(names: list[str], found: Iterable[str]) -> list[str]:
    found = set(found)
    missing = [name for name in names if name not in found]
    if missing:
        raise UnknownEntry(f"no schedule entry named {missing[0]!r}; "
                           "see `pgjobs schedule list`")
    return names


def set_enabled(session: Session, names: list[str], enabled: bool) -> None:
    """Pause or resume ``names``; UnknownEntry (and nothing written) if one is unknown.
    A resumed entry counts from now: runs missed while paused are not caught up."""
    statement = queries.RESUME if enabled else queries.SET_ENABLED
    params = {"names": names} if enabled else {"names": names, "enabled": False}
    _require(names, session.scalars(statement, params))
    bump_change_marker(session)


def remove(session: Session, names: list[str]) -> None:
    """Delete ``names``; UnknownEntry (and nothing written) if one is unknown."""
    _require(names, session.scalars(queries.REMOVE, {"names": names}))
    bump_change_marker(session)


def get(session: Session, name: str) -> PeriodicTask:
    task = session.scalars(sa.select(PeriodicTask).filter_by(name=name)).first()
    if task is None:
        _require([name], [])
    return task


@dataclass(frozen=True)
class Row:
    """One entry with what ``pgjobs schedule list`` shows."""

    task: PeriodicTask
    catch_up: str


def all_entries(session: Session) -> list[Row]:
    """Every entry, enabled or not, ordered by name."""
    policies = dict(session.execute(queries.CATCH_UP_POLICIES).all())
    tasks = session.scalars(sa.select(PeriodicTask).order_by(PeriodicTask.name)).all()
    return [Row(task, policies.get(task.name, "once")) for task in tasks]
