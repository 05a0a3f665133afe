"""Durable, cluster-wide revokes: every revoked task id is also stored in PostgreSQL.

Celery keeps revokes in each worker's memory, and shares them at start-up only through
Mingle, which it turns off for transports it does not know. So a worker that was down
when a task was revoked, or started later, or every worker after a restart, would run it.

- Sending: :class:`Control` (the app's ``control``) inserts the ids into
  ``pgjobs_revoked_task`` before broadcasting a ``revoke``, whichever way it is sent
  (``AsyncResult.revoke``, ``app.control.revoke``, ``celery control revoke``, Flower).
- Running: :class:`LoadRevokes`, a worker bootstep, loads every stored id into the worker's
  revoked set before the worker consumes anything. Then it merges the ids stored since:
  every ``REFRESH_SECONDS`` until ``SETTLE_SECONDS`` after the worker is ready (revokes
  broadcast while it was starting, before it listened to broadcasts), then every
  ``SETTLED_REFRESH_SECONDS`` on a connection opened for the purpose, so an idle worker
  neither queries nor holds a connection for this in between. Every ``RELOAD_SECONDS`` it
  loads all of them again: Celery forgets a revoke after ``REVOKE_EXPIRES`` (3 h), and an
  ETA can lie further ahead.

Rows are deleted by ``delete_old_data`` after ``REVOKE_RETENTION_DAYS``. A worker holds at
most ``CELERY_WORKER_REVOKES_MAX`` (50,000) revokes in memory, the newest ones. Revokes by
stamped header (``revoke_by_stamped_headers``) stay in memory only, as in Celery.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from celery import bootsteps, signals
from celery.app.control import Control as CeleryControl
from celery.utils.functional import maybe_list
from celery.worker import state as worker_state

from config.errors import one_line
from config.ops.queries import QUERIES
from config.settings import get_settings

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
SETTLE_SECONDS = 10.0
SETTLED_REFRESH_SECONDS = 60.0
RELOAD_SECONDS = min(1800.0, worker_state.REVOKE_EXPIRES / 2)
# Rows are stamped with their transaction's start and may commit out of order: look back.
_LOOK_BACK = timedelta(seconds=60)


def _connect() -> psycopg.Connection:
    return psycopg.connect(get_settings().require_database_url(), autocommit=True,
                           connect_timeout=5, application_name="pgjobs-revokes")


def record(task_ids: list[str]) -> None:
    """Store revoked ids, so that no worker ever runs them."""
    with _connect() as conn:
        conn.execute(QUERIES["revoke_record"], {"ids": task_ids})


def stored_since(conn: psycopg.Connection, since: datetime | None) -> list[tuple[str, datetime]]:
    """``(task_id, revoked_at)`` of the revokes stored at or after ``since`` (None: all)."""
    return conn.execute(QUERIES["revoked_since"], {"since": since}).fetchall()


class Control(CeleryControl):
    """Celery's remote control; a ``revoke`` is stored before it is broadcast."""

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  *args: Any, **kwargs: Any) -> Any:
        if command == "revoke":
            ids = [str(task_id) for task_id in maybe_list((arguments or {}).get("task_id"))]
            if ids:
                record(ids)
        return super().broadcast(command, arguments, *args, **kwargs)


class LoadRevokes(bootsteps.StartStopStep):
    """Worker bootstep: stored revokes into the worker's revoked set, kept up to date."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._conn: psycopg.Connection | None = None
        self._since: datetime | None = None
        self._timers: list[Any] = []
        self._settles_at = 0.0
        self._next_refresh = 0.0

    def start(self, worker: Any) -> None:
        self._settles_at = math.inf
        self._next_refresh = 0.0
        signals.worker_ready.connect(self.ready, weak=False)
        self.load(full=True)
        self._timers = [worker.timer.call_repeatedly(REFRESH_SECONDS, self.refresh),
                        worker.timer.call_repeatedly(RELOAD_SECONDS, self.load, (True,))]

    def ready(self, **_: Any) -> None:
        """The worker listens to broadcasts now: soon, stored revokes need reading only
        once in a while."""
        self._settles_at = time.monotonic() + SETTLE_SECONDS

    def refresh(self) -> None:
        """Merge recent revokes: at every call while starting, then once in a while."""
        now = time.monotonic()
        if now < self._settles_at:
            self.load()
        elif now >= self._next_refresh:
            self._next_refresh = now + SETTLED_REFRESH_SECONDS
            self.load()
            self._close()

    def stop(self, worker: Any) -> None:
        signals.worker_ready.disconnect(self.ready)
        for timer in self._timers:
            timer.cancel()
        self._close()

    def load(self, full: bool = False) -> None:
        """Merge the stored revokes (all, or those since the last load) into the worker."""
        try:
            rows = stored_since(self._connection(), None if full else self._since)
        except psycopg.Error as error:
            logger.warning("pgjobs: could not read revoked tasks (%s); retrying",
                           one_line(error))
            self._close()
            return
        if rows:
            worker_state.merge_revoked([task_id for task_id, _ in rows])
            self._since = rows[-1][1] - _LOOK_BACK

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = _connect()
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
