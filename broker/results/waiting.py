"""Waiting for results: a LISTEN connection plays the part of Redis' pub/sub.

Storing a ready state sends ``NOTIFY pgjobs_results, '<task id>'`` on commit. A process that
waits for results (``get()``, ``join()``, ``GroupResult.get()``) opens one dedicated
connection that LISTENs on that channel; a notification for a pending task makes the waiter
read that task's row. Notifications are a hint, the table is the truth: every
``poll_interval`` seconds, and whenever the LISTEN connection was just (re)opened or is
down, the waiter reads the rows of everything it waits for.

Processes that never wait never open the LISTEN connection; the backend only notifies
while at least one such connection exists on the database. Each one holds a shared advisory
lock for its session (``listen_lock`` in ``queries.sql``), which a store that finds no waiter
holds exclusively until its commit: a waiter arriving meanwhile gets the lock once the row is
committed, then reads it. Checking the lock costs the store next to nothing, where a look
at ``pg_stat_activity`` cost it more than the insert itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
from celery import states
from celery.backends.asynchronous import BaseResultConsumer, Drainer

from broker.results.connection import LISTEN_APPLICATION_NAME, query
from broker.session import INHERITED
from broker.store import first_line

logger = logging.getLogger(__name__)

#: Stands for "every pending task": a poll, not a notification.
EVERYTHING = None
#: While the LISTEN connection is down, waiters read the table at least this often.
DOWN_POLL_INTERVAL = 1.0
MAX_BACKOFF = 30.0


class Listen:
    """The dedicated LISTEN connection: opened on demand, reopened with backoff."""

    def __init__(self, conninfo: str, connect_timeout: int = 5) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._lost = False
        self._opening = threading.Lock()  # a caller and the reading thread may both try

    @property
    def backend_pid(self) -> int | None:
        """The server process of the LISTEN session, if open."""
        return self._conn.info.backend_pid if self._usable() else None

    def _usable(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and self._pid == os.getpid()

    def ensure(self) -> bool:
        """Open the connection if it is down and the backoff allows; True if opened now."""
        with self._opening:
            return self._open()

    def _open(self) -> bool:
        if self._usable() or time.monotonic() < self._next_attempt:
            return False
        self.close()
        try:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout,
                application_name=LISTEN_APPLICATION_NAME)
            self._pid = os.getpid()
            self._conn.execute(query("listen"))
            # The lock tells stores that someone waits; it outlives this transaction.
            with self._conn.transaction():
                self._conn.execute(query("listen_lock_timeout"))
                self._conn.execute(query("listen_lock"))
        except psycopg.Error as exc:
            self._on_error(exc)
            return False
        self._backoff = 0.0
        if self._lost:
            logger.warning("pgjobs results: LISTEN connection restored")
            self._lost = False
        return True

    def wait(self, timeout: float) -> set[str] | None:
        """Task ids notified within ``timeout`` seconds (returns at the first notification),
        or :data:`EVERYTHING` when notifications may have been missed."""
        if self.ensure():
            return EVERYTHING  # anything stored before the LISTEN took effect
        if not self._usable():
            time.sleep(min(timeout, DOWN_POLL_INTERVAL))
            return EVERYTHING
        assert self._conn is not None
        try:
            notes = list(self._conn.notifies(timeout=timeout, stop_after=1))
            notes += self._conn.notifies(timeout=0.0)
        except psycopg.Error as exc:
            self._on_error(exc)
            return EVERYTHING
        return {note.payload for note in notes}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pid != os.getpid():
            INHERITED.append(conn)  # closing would end the parent's session too
            return
        try:
            conn.close()
        except psycopg.Error:
            pass

    def _on_error(self, exc: psycopg.Error) -> None:
        self.close()
        if not self._lost:
            logger.warning("pgjobs results: LISTEN connection lost (%s); polling until it is back",
                           first_line(exc))
            self._lost = True
        self._backoff = min(MAX_BACKOFF, max(0.5, self._backoff * 2))
        self._next_attempt = time.monotonic() + self._backoff


class ResultConsumer(BaseResultConsumer):
    """Celery's asynchronous-backend consumer, fed by :class:`Listen` and the safety poll."""

    def __init__(self, backend: Any, app: Any, accept: Any, pending_results: Any,
                 pending_messages: Any) -> None:
        super().__init__(backend, app, accept, pending_results, pending_messages)
        self.poll_interval: float = backend.poll_interval
        self.listen = Listen(backend.listen_conninfo)
        self._reading = threading.Condition()
        self._reader_busy = False
        self._next_poll = 0.0

    # -- what Celery calls --------------------------------------------------------------------

    def start(self, initial_task_id: str, **kwargs: Any) -> None:
        self.consume_from(initial_task_id)

    def consume_from(self, task_id: str) -> None:
        # LISTEN before the caller's first read of the row, so no result slips in between.
        with self._reading:
            if self.listen.ensure():
                self._next_poll = 0.0

    def cancel_for(self, task_id: str) -> None:
        """Nothing to undo: one channel serves every task."""

    def stop(self) -> None:
        self.listen.close()

    def on_after_fork(self) -> None:
        self.listen.close()  # kept open for the parent, never used here
        self._reading = threading.Condition()
        self._reader_busy = False

    def on_wait_for_pending(self, result: Any, **kwargs: Any) -> None:
        for meta in result._iter_meta(**kwargs):
            if meta is not None and meta["status"] in states.READY_STATES:
                self._resolve(meta)

    def drain_events(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for results; one thread reads, the others wait
        for it to hand over what it read."""
        timeout = 1.0 if timeout is None else timeout
        with self._reading:
            if self._reader_busy:
                self._reading.wait(timeout)
                return
            self._reader_busy = True
        try:
            self._read(timeout)
        finally:
            with self._reading:
                self._reader_busy = False
                self._reading.notify_all()

    def drain_events_until(self, p: Any, timeout: float | None = None,
                           on_interval: Callable[[], Any] | None = None) -> Iterator[None]:
        if type(self.drainer) is not Drainer:  # gevent/eventlet: their own loop
            return super().drain_events_until(p, timeout=timeout, on_interval=on_interval)
        return self._drain_until(p, timeout, on_interval)

    # -- internals ------------------------------------------------------------------------------

    def _drain_until(self, p: Any, timeout: float | None,
                     on_interval: Callable[[], Any] | None) -> Iterator[None]:
        # Celery's Drainer waits a whole second per turn, so get(timeout=0.2) took a second;
        # this one never waits past the caller's deadline.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not p.ready:
            wait = 1.0
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError()
            self.drain_events(timeout=wait)
            if on_interval:
                on_interval()
            yield

    def _read(self, timeout: float) -> None:
        now = time.monotonic()
        notified = self.listen.wait(max(0.0, min(timeout, self._next_poll - now)))
        if notified is EVERYTHING or time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poll_interval
            notified = None
        self._deliver(self._pending_ids() if notified is None else notified)

    def _pending_ids(self) -> set[str]:
        return {task_id for mapping in self._pending_results for task_id in list(mapping)}

    def _deliver(self, task_ids: Iterable[str]) -> None:
        wanted = set(task_ids) & self._pending_ids()
        if not wanted:
            return
        for meta in self.backend.ready_metas(wanted):
            self._resolve(meta)

    def _resolve(self, meta: dict[str, Any]) -> None:
        self.on_state_change(meta, None)
        # Every waiter reads the table before it waits, so nothing needs the buffer Celery
        # keeps for results that arrive before their waiter; without this it only grows.
        buffered = self._pending_messages.pop(meta["task_id"], None)
        if buffered is not None:
            self._pending_messages.total -= len(buffered)
