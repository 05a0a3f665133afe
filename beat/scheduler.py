"""``beat.scheduler:Scheduler``: the database schedule, dispatched by one leader at a time.

It reuses sqlalchemy-celery-beat's models, sessions and entries, and replaces the parts
that do not hold with several beats: it never creates tables (Alembic does), it dispatches
only while it holds the leader lock, it records every tick with its send, and it computes
due times itself (time zones, missed runs, ``beat_cron_starting_deadline``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from celery import beat
from kombu.utils.uuid import uuid
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker
from sqlalchemy_celery_beat.models import PeriodicTask
from sqlalchemy_celery_beat.session import session_cleanup

from beat import queries, store
from beat.entry import Entry
from beat.leadership import Leadership, LostLeadership
from beat.schedule import default_entries
from beat.ticks import InTransaction, Tick, TickLedger, transactional_publisher
from broker.urls import redact

logger = logging.getLogger("beat.scheduler")

# The leader prunes the tick record this often (seconds).
PRUNE_EVERY = 3600.0


class Scheduler(beat.Scheduler):
    """Celery beat scheduler over sqlalchemy-celery-beat's tables, safe to run many times."""

    Entry = Entry

    def __init__(self, app, *args, **kwargs) -> None:
        self.dburi: str = kwargs.pop("dburi", None) or app.conf.beat_dburi
        self.engine = store.create_engine(self.dburi)
        self.Session = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._entries: dict[str, Entry] | None = None
        self._marker: datetime | None = None
        # The leader lock is a session's advisory lock: it needs a connection to PostgreSQL
        # itself, where the schedule may go through a transaction-pooling PgBouncer.
        lock_dburi = kwargs.pop("lock_dburi", None) or app.conf.get("beat_lock_dburi")
        self._leadership = Leadership(lock_dburi or self.dburi, kwargs.pop("identity", None))
        self._ledger: TickLedger | None = None
        self._in_transaction: InTransaction | None = None
        self._pruned_at = 0.0
        super().__init__(app, *args, **kwargs)

    # --- Celery's Scheduler interface ------------------------------------------------------

    def setup_schedule(self) -> None:
        self._refuse_unmigrated_database()
        try:
            self._sync_defaults()
        except SQLAlchemyError as error:
            logger.error("beat: could not add the default entries yet (%s); "
                         "the leader retries when it takes over", error.__class__.__name__)

    def _refuse_unmigrated_database(self) -> None:
        """Exit in one line rather than contest the lead forever on a database without
        beat's tables."""
        try:
            missing = store.missing_tables(self.engine)
        except SQLAlchemyError:
            return  # unreachable now: the leadership loop retries and says so
        if missing:
            logger.critical("pgjobs: the database %r has no table %s; run `pgjobs migrate` "
                            "first", make_url(self.dburi).database, missing[0])
            raise SystemExit(1)

    def get_schedule(self) -> dict[str, Entry]:
        return self._entries or {}

    def set_schedule(self, schedule: dict[str, Entry]) -> None:
        self._entries = schedule

    schedule = property(get_schedule, set_schedule)

    def tick(self, *args, **kwargs) -> float:
        """One pass: lead or stand by, reload edits, send what is due. Returns the sleep."""
        if not self._leadership.confirm():
            self._entries = None  # a future leader reloads everything
            return self._retry_wait()
        try:
            self._refresh()
            # Wake up in time to renew the lease, even with nothing due.
            return min(self._dispatch_due(), self._leadership.times.renew_every)
        except LostLeadership as error:
            self._leadership.lost(str(error))
        except SQLAlchemyError as error:
            self._leadership.lost(f"database error: {error.__class__.__name__}")
        self._entries = None
        return self._retry_wait()

    def sync(self) -> None:
        """Nothing to do: progress is written with every tick."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._leadership.release()
            self.engine.dispose()

    def _retry_wait(self) -> float:
        return min(self._leadership.times.standby_retry, self.max_interval)

    @property
    def info(self) -> str:
        return "    . db -> " + redact(self.dburi)

    @property
    def is_leader(self) -> bool:
        return self._leadership.leading

    @property
    def leadership(self) -> Leadership:
        return self._leadership

    # --- leading ---------------------------------------------------------------------------

    def _refresh(self) -> None:
        connection = self._leadership.connection
        marker = connection.scalar(queries.CHANGE_MARKER)
        connection.commit()
        if self._entries is None:
            self._take_over()
        elif marker == self._marker:
            return
        else:
            logger.info("beat: the schedule changed; reloading it")
        self._marker = marker
        self._entries = self._load()

    def _take_over(self) -> None:
        self._in_transaction = self._publisher()
        self._ledger = TickLedger(self._leadership, self._in_transaction)
        self._sync_defaults()
        self._ledger.report_unsent()

    def _publisher(self) -> InTransaction | None:
        with self.app.connection_for_write() as connection:
            return transactional_publisher(connection.transport)

    def _sync_defaults(self) -> None:
        with store.transaction(self.engine) as session:
            store.add_entries(session, default_entries(), only_missing=True)

    def _load(self) -> dict[str, Entry]:
        session = self.Session()
        with session_cleanup(session):
            policies = dict(session.execute(queries.CATCH_UP_POLICIES).all())
            models = session.query(PeriodicTask).filter_by(enabled=True).all()
        loaded_at = self.clock()
        entries = (self._entry(m, policies.get(m.name, "once"), loaded_at) for m in models)
        loaded = {entry.name: entry for entry in entries if entry is not None}
        for entry in loaded.values():
            if entry.never_ran:
                self._anchor(entry)
        return loaded

    def _anchor(self, entry: Entry) -> None:
        # Without a stored start, a reload or a new leader would count again from its own
        # load time, postponing an interval entry or skipping a crontab slot due meanwhile.
        stored = self._ledger.anchor(entry.name, entry.last_run_at)
        if stored is not None:
            entry.anchor_at(stored)

    def _entry(self, model: PeriodicTask, catch_up: str, loaded_at: datetime) -> Entry | None:
        try:
            return self.Entry(model, Session=self.Session, app=self.app, catch_up=catch_up,
                              loaded_at=loaded_at)
        except Exception:  # one broken row must not stop the others
            logger.exception("beat: skipping entry %r, which could not be loaded", model.name)
            return None

    def _dispatch_due(self) -> float:
        self._maybe_prune()
        wait = float(self.max_interval)
        for entry in list(self.get_schedule().values()):
            wait = min(wait, self._handle_safely(entry))
        return max(wait, 0.0)

    def _handle_safely(self, entry: Entry) -> float:
        try:
            return self._handle(entry)
        except (LostLeadership, SQLAlchemyError):
            raise
        except Exception:  # one broken entry must not stop the others
            logger.exception("beat: cannot schedule %r; trying again in %s s", entry.name,
                             self.max_interval)
            return float(self.max_interval)

    def _handle(self, entry: Entry) -> float:
        decision = entry.plan(self.clock(), deadline=self.app.conf.beat_cron_starting_deadline)
        if decision.action == "wait":
            return decision.wait
        if decision.action == "skip":
            self._ledger.skip(entry.name, decision.due_at)
            logger.warning("beat: skipped %d missed run(s) of %r up to %s (%s)",
                           decision.missed, entry.name, decision.due_at.isoformat(),
                           decision.reason)
        elif not self._fire(entry, decision.due_at, decision.missed):
            return self._retry_wait()  # soon, not at once: the broker refused it
        entry.last_run_at = entry.stored_last_run_at = decision.due_at
        return 0.0

    def _fire(self, entry: Entry, due_at: datetime, missed: int) -> bool:
        """Send one tick; False when the broker refused it (it is tried again)."""
        tick = Tick(entry.name, due_at, uuid(), entry.stored_last_run_at, entry.model.enabled)
        try:
            sent = self._ledger.fire(tick, lambda: self._send(entry, tick))
        except (LostLeadership, SQLAlchemyError):
            raise
        except Exception as error:  # the claim was given back
            logger.error("beat: could not send %r (%s); trying again", entry.name, error)
            return False
        if not sent:
            logger.info("beat: %r due at %s was already sent", entry.name, due_at.isoformat())
        elif missed > 1:
            logger.warning("beat: sent %r once for %d missed runs (catch_up=once), id %s",
                           entry.name, missed, tick.task_id)
        else:
            logger.info("beat: sent %r (%s) due at %s, id %s", entry.name, entry.task,
                        due_at.isoformat(), tick.task_id)
        return True

    def _send(self, entry: Entry, tick: Tick) -> object:
        options = dict(entry.options)
        options["task_id"] = tick.task_id
        options["headers"] = {**options.get("headers", {}), "celery_beat_task": True,
                              "pgjobs_beat_due_at": tick.due_at.isoformat()}
        if self._in_transaction is None:
            options["producer"] = self.producer  # otherwise the transport picks the connection
        task = self.app.tasks.get(entry.task)
        send = task.apply_async if task else self._send_by_name(entry.task)
        return send(entry.args, entry.kwargs, **options)

    def _send_by_name(self, name: str) -> Callable[..., object]:
        return lambda args, kwargs, **options: self.app.send_task(name, args, kwargs, **options)

    def _maybe_prune(self) -> None:
        now = self.clock().timestamp()
        if now - self._pruned_at >= PRUNE_EVERY:
            self._ledger.prune()
            self._pruned_at = now
