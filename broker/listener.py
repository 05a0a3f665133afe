"""The dedicated LISTEN connection that wakes consumers.

Notifications are a hint: the table is the truth, and consumers still look now and then
(the transport runs its safety net on this connection, which also proves it alive). This
connection is never pooled; when it drops it is reopened with backoff (one log line when
lost, one when back), and everything is reported as notified on reconnect, since
notifications sent while it was down are gone.

A notification's payload is ``''`` when its queue has messages ready, or ``eta:<seconds>``
when a delayed message was published there that falls due in that many seconds: the second
kind is not a reason to claim, only to promote that message when it falls due
(:meth:`Listener.take_due`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from broker.messages import wake_channel
from broker.queries import composed, query
from broker.session import INHERITED as _INHERITED
from broker.store import first_line

logger = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
ETA = "eta:"


class Listener:
    """LISTENs on the wake-up channel of every queue it is given.

    ``conninfo`` should carry the fault budget (:func:`broker.store.fault_budget`): TCP
    keepalives end a session the network dropped while idle. The queries of :meth:`ask`
    cover the networks where keepalives do not reach the server (a proxy that answers them
    itself).
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._due_at: float | None = None
        self._conn: psycopg.Connection | None = None
        self._channels: set[str] = set()
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._lost = False
        self._pid = os.getpid()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def backend_pid(self) -> int | None:
        return self._conn.info.backend_pid if self.connected else None

    def fileno(self) -> int | None:
        return self._conn.fileno() if self.connected else None

    def add(self, queue: str) -> None:
        channel = wake_channel(queue)
        if channel not in self._channels:
            self._channels.add(channel)
            self._run("listen", channel)

    def remove(self, queue: str) -> None:
        channel = wake_channel(queue)
        if channel in self._channels:
            self._channels.discard(channel)
            self._run("unlisten", channel)

    def ensure(self) -> bool:
        """Connect if down and the backoff allows; True if it (re)connected just now."""
        if self.connected or time.monotonic() < self._next_attempt:
            return False
        try:
            self._pid = os.getpid()
            self._conn = psycopg.connect(self._conninfo, autocommit=True,
                                         application_name="pgjobs-broker-listen")
            for channel in self._channels:
                self._conn.execute(composed("listen", channel=channel))
        except psycopg.Error as exc:
            self._on_error(exc)
            return False
        self._backoff = 0.0
        if self._lost:
            logger.warning("pgjobs broker: LISTEN connection restored")
            self._lost = False
        return True

    def drain(self) -> set[str]:
        """Channels notified since the last call, without blocking."""
        return self.wait(0.0)

    def wait(self, timeout: float) -> set[str]:
        """Channels notified of ready messages within ``timeout`` seconds (returns at the
        first notification). Every channel counts as notified when the connection was just
        (re)opened."""
        if not self.connected:
            if self.ensure():
                return set(self._channels)
            time.sleep(timeout)
            return set()
        assert self._conn is not None
        try:
            notes = list(self._conn.notifies(timeout=timeout, stop_after=1))
            notes += self._conn.notifies(timeout=0.0)  # the backlog
        except psycopg.Error as exc:
            self._on_error(exc)
            return set(self._channels)
        return self._sort(notes)

    def _sort(self, notes: Iterable[psycopg.Notify]) -> set[str]:
        """The channels of ``notes`` announcing ready messages; the others' due times are
        kept for :meth:`take_due`."""
        ready = set()
        for note in notes:
            due_in = _due_in(note.payload)
            if due_in is None:
                ready.add(note.channel)
            else:
                due_at = time.monotonic() + due_in
                self._due_at = due_at if self._due_at is None else min(self._due_at, due_at)
        return ready

    def take_due(self) -> float | None:
        """The earliest time (monotonic) a delayed message announced since the last call
        falls due, or None."""
        due_at, self._due_at = self._due_at, None
        return due_at

    def ask(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Run the named query on this connection; its row, or None when the connection is
        down or fails (then dropped, and reopened by :meth:`ensure`). Notifications received
        meanwhile wait for the next :meth:`wait`."""
        if not self.connected:
            return None
        assert self._conn is not None
        try:
            return self._conn.execute(query(name), params).fetchone()
        except psycopg.Error as exc:
            self._on_error(exc)
            return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if os.getpid() != self._pid:
            _INHERITED.append(conn)  # closing would end the parent's session too
            return
        try:
            conn.close()
        except psycopg.Error:
            pass

    def _run(self, name: str, channel: str) -> None:
        if not self.connected:
            return
        assert self._conn is not None
        try:
            self._conn.execute(composed(name, channel=channel))
        except psycopg.Error as exc:
            self._on_error(exc)

    def _on_error(self, exc: psycopg.Error) -> None:
        self.close()
        if not self._lost:
            logger.warning("pgjobs broker: LISTEN connection lost (%s); polling until it is back",
                           first_line(exc))
            self._lost = True
        self._backoff = min(MAX_BACKOFF, max(0.5, self._backoff * 2))
        self._next_attempt = time.monotonic() + self._backoff


def _due_in(payload: str) -> float | None:
    """Seconds until due, of an ``eta:`` payload; None for any other (a ready queue)."""
    if not payload.startswith(ETA):
        return None
    try:
        return max(0.0, float(payload[len(ETA):]))
    except ValueError:
        return None
