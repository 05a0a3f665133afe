"""The dedicated LISTEN connection that wakes consumers.

Notifications are a hint: the table is the truth, and consumers still poll. This connection
is never pooled; when it drops it is reopened with backoff (one log line when lost, one when
back), and everything is reported as notified on reconnect, since notifications sent while
it was down are gone.
"""

from __future__ import annotations

import logging
import os
import time

import psycopg

from broker.messages import wake_channel
from broker.queries import composed, query
from broker.session import INHERITED as _INHERITED
from broker.store import first_line

logger = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class Listener:
    """LISTENs on the wake-up channel of every queue it is given.

    ``conninfo`` should carry the fault budget (:func:`broker.store.fault_budget`): TCP
    keepalives end a session the network dropped while idle. :meth:`check_alive` adds a query
    after ``liveness`` seconds without traffic, for the networks where keepalives do not
    reach the server (a proxy that answers them itself).
    """

    def __init__(self, conninfo: str, liveness: float = 30.0) -> None:
        self._conninfo = conninfo
        self._liveness = liveness
        self._heard_at = time.monotonic()
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
        self._heard_at = time.monotonic()
        if self._lost:
            logger.warning("pgjobs broker: LISTEN connection restored")
            self._lost = False
        return True

    def drain(self) -> set[str]:
        """Channels notified since the last call, without blocking."""
        return self.wait(0.0)

    def wait(self, timeout: float) -> set[str]:
        """Channels notified within ``timeout`` seconds (returns at the first). Every channel
        counts as notified when the connection was just (re)opened."""
        if not self.connected:
            if self.ensure():
                return set(self._channels)
            time.sleep(timeout)
            return set()
        assert self._conn is not None
        try:
            notes = self._conn.notifies(timeout=timeout, stop_after=1)
            channels = {note.channel for note in notes} | self._backlog()
        except psycopg.Error as exc:
            self._on_error(exc)
            return set(self._channels)
        if channels:
            self._heard_at = time.monotonic()
        return channels

    def check_alive(self) -> None:
        """After ``liveness`` seconds without a notification, make sure the server still
        answers; a dead session is dropped (and reopened by :meth:`ensure`)."""
        if not self.connected or time.monotonic() - self._heard_at < self._liveness:
            return
        assert self._conn is not None
        try:
            self._conn.execute(query("listener_alive"))
        except psycopg.Error as exc:
            self._on_error(exc)
            return
        self._heard_at = time.monotonic()

    def _backlog(self) -> set[str]:
        assert self._conn is not None
        return {note.channel for note in self._conn.notifies(timeout=0.0)}

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
