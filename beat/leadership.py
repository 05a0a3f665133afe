"""Who dispatches: a session advisory lock plus a lease row, on one dedicated connection.

See the package docstring for the protocol. This module opens, uses and closes that
connection, renews the lease, ends the session of a leader whose lease expired, and logs
each change of role in one line.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from beat import queries
from broker.urls import password_for
from config.errors import one_line

logger = logging.getLogger("beat.leadership")

# The lock's two int4 keys: "pgjo" and "beat". Advisory locks are per database, so one
# pgjobs database has one beat leader.
LOCK_KEYS = {"key1": 0x70676A6F, "key2": 0x62656174}

# What the README promises: a frozen or dead leader is replaced within this many seconds.
TAKEOVER_PROMISE = 10.0

# SQLSTATE of "permission denied" (pg_terminate_backend on another role's session).
_INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class LeaseTimes:
    """The leader lease's clock, in seconds (measured by the database server's clock).

    - ``lease``: how long a renewal keeps the lease; a leader that has not renewed for this
      long is deposed.
    - ``renew_every``: the leader renews at least this often; at most a third of ``lease``,
      so two late renewals in a row still keep it.
    - ``standby_retry``: how often a standby contests the lock and checks the lease.
    - ``depose_wait``: how long a standby waits for the session it ended to go away.

    A frozen leader is replaced after at most ``lease + standby_retry + depose_wait``, which
    must stay within :data:`TAKEOVER_PROMISE`.
    """

    lease: float = 6.0
    renew_every: float = 2.0
    standby_retry: float = 1.0
    depose_wait: float = 2.0

    def __post_init__(self) -> None:
        if min(self.lease, self.renew_every, self.standby_retry, self.depose_wait) <= 0:
            raise ValueError("beat lease times must be positive")
        if self.renew_every > self.lease / 3:
            raise ValueError(f"beat lease renewal every {self.renew_every} s must be at most "
                             f"a third of the {self.lease} s lease")
        if self.takeover_bound > TAKEOVER_PROMISE:
            raise ValueError(f"beat takeover could take {self.takeover_bound} s, over the "
                             f"{TAKEOVER_PROMISE} s promised; shorten the lease")

    @property
    def takeover_bound(self) -> float:
        """The longest a frozen leader can stay in place."""
        return self.lease + self.standby_retry + self.depose_wait


TIMES = LeaseTimes()

# A connection that stops answering is given up within about 5 s, on both sides: the
# client's keepalives and TCP user timeout, and the server's (set per session), so the
# server frees the lock for a standby and the old leader notices it lost it.
_KEEPALIVE_ARGS = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
    "connect_timeout": 5,
    "options": "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1"
               " -c tcp_keepalives_count=3 -c tcp_user_timeout=5000"
               " -c statement_timeout=5000",
}


class LostLeadership(Exception):
    """This process no longer holds the leader lock and lease; it must not dispatch."""


def default_identity() -> str:
    """``pgjobs-beat:<host>:<pid>``: the lock connection's application_name."""
    return f"pgjobs-beat:{socket.gethostname()}:{os.getpid()}"[:63]


def _with_remembered_password(sqlalchemy_url: str) -> sa.URL:
    """``sqlalchemy_url`` with the password kept apart for it (``broker.urls.remember_password``)
    when it names none: Celery shows ``beat_lock_dburi`` whole in ``inspect conf`` and
    ``celery report``, so pgjobs sets it without one."""
    url = sa.make_url(sqlalchemy_url)
    if url.password is not None:
        return url
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return url.set(password=password_for(libpq))


class Leadership:
    """The leader lock and lease of one beat process.

    :meth:`confirm` is called before every scheduler pass: a standby contests the lock (and
    deposes a leader whose lease expired), a leader renews its lease. :meth:`prove` runs
    first in every transaction that acts as the leader.
    """

    def __init__(self, sqlalchemy_url: str, identity: str | None = None,
                 times: LeaseTimes = TIMES) -> None:
        self.identity = identity or default_identity()
        self.times = times
        self._engine = sa.create_engine(
            _with_remembered_password(sqlalchemy_url), poolclass=sa.NullPool,
            connect_args={**_KEEPALIVE_ARGS, "application_name": self.identity},
        )
        self._connection: sa.Connection | None = None
        self._lease = {**LOCK_KEYS, "holder": self.identity, "lease": times.lease}
        self.leading = False
        self._standby_logged = False
        self._unreachable_logged = False
        self._denied_logged = False

    @property
    def connection(self) -> sa.Connection:
        """The lock connection; valid only while :attr:`leading`."""
        if not self.leading or self._connection is None:
            raise LostLeadership("not the beat leader")
        return self._connection

    def confirm(self) -> bool:
        """Take or keep the lead; True when this process leads now."""
        try:
            return self._renew() if self.leading else self._contest()
        except SQLAlchemyError as error:
            self._unreachable(one_line(error))
            return False

    def prove(self, connection: sa.Connection) -> None:
        """Renew the lease inside the caller's open transaction on :attr:`connection`.

        Raises LostLeadership unless this session still holds the lock and an unexpired
        lease, so the transaction must not go on to act as the leader."""
        if connection.scalar(queries.RENEW_LEASE, self._lease) is None:
            raise LostLeadership("its lease expired or another beat took over")

    def lost(self, reason: str) -> None:
        """Step down after a failure seen elsewhere on the lock connection."""
        self._drop(reason)

    def release(self) -> None:
        """Close the lock connection; the server frees the lock at once."""
        if self.leading:
            logger.info("beat: %s stepped down (shutting down)", self.identity)
        self.leading = False
        self._close()
        self._engine.dispose()

    # --- standby ---------------------------------------------------------------------------

    def _contest(self) -> bool:
        connection = self._open()
        if self._take(connection) or (self._depose_expired(connection) and self._take(connection)):
            return True
        self._standing_by(connection)
        return False

    def _take(self, connection: sa.Connection) -> bool:
        taken = connection.scalar(queries.TAKE_LEAD, self._lease) is not None
        connection.commit()
        self._unreachable_logged = False
        if taken:
            self.leading, self._standby_logged = True, False
            logger.warning("beat: %s is now the leader and dispatches the schedule",
                           self.identity)
        return taken

    def _depose_expired(self, connection: sa.Connection) -> bool:
        """End the lock holder's session if it has no live lease; True if one ended."""
        try:
            ended = connection.execute(queries.DEPOSE_EXPIRED, {
                **LOCK_KEYS, "wait_ms": int(self.times.depose_wait * 1000)}).all()
            connection.commit()
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
                raise
            connection.rollback()
            self._denied(one_line(error))
            return False
        for pid, holder, gone in ended:
            logger.warning("beat: %s ended the session of %s (backend %d), which held the "
                           "leader lock without a live lease%s", self.identity, holder, pid,
                           "" if gone else "; it has not exited yet")
        return any(gone for _, _, gone in ended)

    def _standing_by(self, connection: sa.Connection) -> None:
        if self._standby_logged:
            return
        holder = connection.scalar(queries.LEASE_HOLDER, LOCK_KEYS)
        connection.commit()
        self._standby_logged = True
        logger.info("beat: %s is standing by; %s leads", self.identity, holder or "another")

    def _denied(self, reason: str) -> None:
        if not self._denied_logged:
            self._denied_logged = True
            logger.error("beat: %s cannot end the session of a leader whose lease expired "
                         "(%s); run every beat as the same database role, or grant its role "
                         "pg_signal_backend", self.identity, reason)

    # --- leader ----------------------------------------------------------------------------

    def _renew(self) -> bool:
        connection = self.connection
        try:
            with connection.begin():
                self.prove(connection)
        except LostLeadership as error:
            self._drop(str(error))
            return False
        return True

    # --- connection ------------------------------------------------------------------------

    def _open(self) -> sa.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = self._engine.connect()
        return self._connection

    def _unreachable(self, reason: str) -> None:
        if "unsupported startup parameter" in reason:
            # A transaction-pooling PgBouncer: the lock is a session's, so it cannot go there.
            reason += ("; the leader lock needs a session on PostgreSQL itself: point "
                       "DATABASE_DIRECT_URL (Celery's beat_lock_dburi) past the pooler")
        if not self.leading and not self._unreachable_logged:
            logger.warning("beat: %s cannot reach the database (%s); retrying every second",
                           self.identity, reason)
            self._unreachable_logged = True
        self._drop(f"database connection failed: {reason}")

    def _drop(self, reason: str) -> None:
        if self.leading:
            logger.warning("beat: %s lost leadership (%s); it stopped dispatching",
                           self.identity, reason)
        self.leading = False
        self._standby_logged = False
        self._close()

    def _close(self) -> None:
        """Drop the lock connection without a round trip to the server.

        SIGTERM's handler calls this from inside whatever query the connection is running;
        a clean close would first wait for that query's driver lock, which never comes
        free. The server frees the lock and rolls back any open transaction as the socket
        closes."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            try:
                connection.invalidate()
                connection.close()
            except SQLAlchemyError:
                pass  # the connection is already gone, which is all we want
