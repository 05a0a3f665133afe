"""Who dispatches: a session advisory lock held on one dedicated connection.

See the package docstring for the protocol. This module only opens, tests and closes
that connection, and logs each change of role in one line.
"""

from __future__ import annotations

import logging
import os
import socket

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from beat import queries
from config.errors import one_line

logger = logging.getLogger("beat.leadership")

# The lock's two int4 keys: "pgjo" and "beat". Advisory locks are per database, so one
# pgjobs database has one beat leader.
LOCK_KEYS = {"key1": 0x70676A6F, "key2": 0x62656174}

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
    """This process no longer holds the leader lock; it must not dispatch."""


def default_identity() -> str:
    """``pgjobs-beat:<host>:<pid>``: the lock connection's application_name."""
    return f"pgjobs-beat:{socket.gethostname()}:{os.getpid()}"[:63]


class Leadership:
    """The leader lock of one beat process.

    :meth:`confirm` is called before every scheduler pass and before every dispatch: a
    standby tries to take the lock, a leader proves it still holds it.
    """

    def __init__(self, sqlalchemy_url: str, identity: str | None = None) -> None:
        self.identity = identity or default_identity()
        self._engine = sa.create_engine(
            sqlalchemy_url, poolclass=sa.NullPool,
            connect_args={**_KEEPALIVE_ARGS, "application_name": self.identity},
        )
        self._connection: sa.Connection | None = None
        self.leading = False
        self._standby_logged = False
        self._unreachable_logged = False

    @property
    def connection(self) -> sa.Connection:
        """The lock connection; valid only while :attr:`leading`."""
        if not self.leading or self._connection is None:
            raise LostLeadership("not the beat leader")
        return self._connection

    def confirm(self) -> bool:
        """Take or keep the lock; True when this process leads now."""
        try:
            return self._still_leading() if self.leading else self._try_take()
        except SQLAlchemyError as error:
            self._unreachable(one_line(error))
            return False

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

    def _try_take(self) -> bool:
        connection = self._open()
        taken = bool(connection.scalar(queries.TRY_LOCK, LOCK_KEYS))
        connection.commit()
        self._unreachable_logged = False
        if taken:
            self.leading, self._standby_logged = True, False
            logger.warning("beat: %s is now the leader and dispatches the schedule",
                           self.identity)
        elif not self._standby_logged:
            self._standby_logged = True
            holder = connection.scalar(queries.LOCK_HOLDER, LOCK_KEYS)
            connection.commit()
            logger.info("beat: %s is standing by; %s leads", self.identity, holder or "another")
        return taken

    def _still_leading(self) -> bool:
        connection = self.connection
        held = bool(connection.scalar(queries.LOCK_HELD, LOCK_KEYS))
        connection.commit()
        if not held:
            self._drop("the lock is no longer held")
        return held

    def _open(self) -> sa.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = self._engine.connect()
        return self._connection

    def _unreachable(self, reason: str) -> None:
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
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except SQLAlchemyError:
                pass  # the connection is already gone, which is all we want
