"""Fire each tick at most once, and never lose one silently.

A tick is one ``(entry name, due time)``. The leader claims it with an INSERT under that
primary key, on its lock connection, in a transaction that first proves (and renews) its
lead, lock and unexpired lease both, and also persists the entry's ``last_run_at``. A second
leader, or the same one after a reload, finds the key taken and does not send.

Publishing the message:

- With pgjobs' PostgreSQL transport (``broker.in_transaction``), the message is inserted in
  that same transaction: claim, progress and message commit together or not at all, so a
  tick is sent exactly once.
- With any other broker the message can only be published after the claim commits. A crash
  in the milliseconds between the two leaves a claimed tick that was never sent. That is
  the lesser fault (a duplicate cannot be undone; a gap can be seen): such ticks keep
  ``sent_at`` NULL, and the next leader logs each of them by name. A publish that fails
  with an error gives its claim back, so the tick is tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from beat import queries
from beat.leadership import Leadership

logger = logging.getLogger("beat.ticks")

InTransaction = Callable[[sa.Connection], AbstractContextManager[object]]
TICK_RETENTION_DAYS = 7


@dataclass(frozen=True)
class Tick:
    """One firing of an entry, and what to restore if its message cannot be published."""

    entry_name: str
    due_at: datetime
    task_id: str
    previous_last_run_at: datetime | None
    was_enabled: bool = True


def transactional_publisher(connection_transport: object) -> InTransaction | None:
    """``broker.in_transaction`` when the app's transport is pgjobs' own, else None."""
    if not type(connection_transport).__module__.startswith("broker"):
        return None
    try:
        from broker import in_transaction
    except ImportError:
        return None
    return in_transaction


class TickLedger:
    """Claims ticks and records progress on the leader's lock connection."""

    def __init__(self, leadership: Leadership, in_transaction: InTransaction | None) -> None:
        self._leadership = leadership
        self._in_transaction = in_transaction

    def fire(self, tick: Tick, send: Callable[[], object]) -> bool:
        """Claim ``tick`` and call ``send``; False when it was already fired."""
        if self._in_transaction is not None:
            return self._fire_atomically(tick, send)
        if not self._claim(tick, sent=False):
            return False
        try:
            send()
        except Exception:
            self._give_back(tick)
            raise
        self._run(queries.MARK_SENT, _key(tick))
        return True

    def skip(self, entry_name: str, due_at: datetime) -> None:
        """Advance ``entry_name`` to ``due_at`` without sending anything."""
        connection = self._leadership.connection
        with connection.begin():
            self._leadership.prove(connection)
            connection.execute(queries.ADVANCE_ENTRY,
                               {"entry_name": entry_name, "due_at": due_at, "fired": 0})

    def anchor(self, entry_name: str, at: datetime) -> datetime | None:
        """Store ``at`` as the last run of ``entry_name`` if it has none; the stored value."""
        connection = self._leadership.connection
        with connection.begin():
            self._leadership.prove(connection)
            return connection.scalar(queries.ANCHOR_ENTRY, {"entry_name": entry_name, "at": at})

    def report_unsent(self) -> None:
        """Log the ticks a previous leader claimed but may not have published."""
        for name, due_at, leader in self._rows(queries.UNSENT_TICKS):
            logger.error("beat: tick of %r due at %s was claimed by %s, which stopped before "
                         "confirming it was sent; it may not have run", name,
                         due_at.isoformat(), leader)

    def prune(self) -> None:
        self._run(queries.PRUNE_TICKS, {"days": TICK_RETENTION_DAYS})

    def _fire_atomically(self, tick: Tick, send: Callable[[], object]) -> bool:
        connection = self._leadership.connection
        with connection.begin():
            if not self._claim_in(connection, tick, sent=True):
                return False
            with self._in_transaction(connection):
                send()
        return True

    def _claim(self, tick: Tick, *, sent: bool) -> bool:
        connection = self._leadership.connection
        with connection.begin():
            return self._claim_in(connection, tick, sent=sent)

    def _claim_in(self, connection: sa.Connection, tick: Tick, *, sent: bool) -> bool:
        self._leadership.prove(connection)
        claimed = connection.scalar(queries.CLAIM_TICK, {
            **_key(tick), "task_id": tick.task_id, "leader": self._leadership.identity,
            "sent": sent})
        if claimed is None:
            return False
        connection.execute(queries.ADVANCE_ENTRY, {**_key(tick), "fired": 1})
        return True

    def _give_back(self, tick: Tick) -> None:
        connection = self._leadership.connection
        with connection.begin():
            connection.execute(queries.UNCLAIM_TICK, _key(tick))
            connection.execute(queries.RESTORE_ENTRY, {
                "entry_name": tick.entry_name, "last_run_at": tick.previous_last_run_at,
                "enabled": tick.was_enabled})

    def _run(self, statement: sa.TextClause, params: dict) -> None:
        connection = self._leadership.connection
        with connection.begin():
            connection.execute(statement, params)

    def _rows(self, statement: sa.TextClause) -> list[sa.Row]:
        connection = self._leadership.connection
        with connection.begin():
            return list(connection.execute(statement))


def _key(tick: Tick) -> dict[str, object]:
    return {"entry_name": tick.entry_name, "due_at": tick.due_at}
