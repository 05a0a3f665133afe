"""A schedule entry as the scheduler holds it: sqlalchemy-celery-beat's row, plus its slots,
its missed-run policy and how far it got."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import schedules
from celery.utils.time import maybe_make_aware
from sqlalchemy_celery_beat.schedulers import ModelEntry

from beat.slots import CatchUp, OnceSlots, Plan, Slots, counting_from, plan, slots_for

# A slot that is at most this late is on time, not missed. It covers a leader failover
# (under 10 s) with room to spare, so failover alone never makes ``catch_up=skip`` drop a run.
ON_TIME_GRACE = 60.0


class Entry(ModelEntry):
    """One enabled ``celery_periodictask`` row, ready to plan and send.

    ``last_run_at`` is the last slot fired or skipped (not the wall time of the send). A
    row that never ran counts from ``loaded_at``, which the leader then stores (see
    :meth:`anchor_at`); a one-off clocked entry from the start of time, so that a run
    missed during downtime still happens once.
    """

    def __init__(self, model, Session, app=None, catch_up: CatchUp = "once",  # noqa: N803
                 loaded_at: datetime | None = None, **kwargs) -> None:
        stored = model.last_run_at
        super().__init__(model, Session=Session, app=app, **kwargs)
        self.catch_up = catch_up
        self.slots: Slots | None = slots_for(self.schedule) if model.enabled else None
        self.stored_last_run_at = stored
        self.last_run_at = counting_from(self.slots, stored, loaded_at or datetime.now(UTC))

    @property
    def never_ran(self) -> bool:
        """True when it counts from ``loaded_at`` because no run was ever stored."""
        return self.stored_last_run_at is None and self.slots is not None and \
            not isinstance(self.slots, OnceSlots)

    def anchor_at(self, stored: datetime) -> None:
        """Count from ``stored``, the start persisted for an entry that never ran."""
        self.last_run_at = self.stored_last_run_at = maybe_make_aware(stored).astimezone(UTC)

    @property
    def is_crontab(self) -> bool:
        return isinstance(self.schedule, schedules.crontab)

    def plan(self, now: datetime, *, deadline: float | None) -> Plan:
        """What to do now (see :func:`beat.slots.plan`)."""
        start = self.model.start_time
        if self.slots is None:
            return Plan("wait")
        if start is not None and now < maybe_make_aware(start):
            return Plan("wait", wait=(maybe_make_aware(start) - now).total_seconds())
        return plan(self.slots, self.last_run_at, now, catch_up=self.catch_up,
                    grace=ON_TIME_GRACE, deadline=deadline if self.is_crontab else None)

    def next_run(self) -> datetime | None:
        """The next slot after the last one handled, for display."""
        return self.slots.first_after(self.last_run_at) if self.slots else None

    def is_due(self) -> schedules.schedstate:
        """Celery's interface, for tools that ask an entry directly."""
        decision = self.plan(datetime.now(UTC), deadline=None)
        return schedules.schedstate(decision.action == "fire", min(decision.wait, 1e8))
