"""The broker's operator API: queue depths, consumers, dead letters, ETA messages.

Every statement is a named block of ``admin.sql``. :class:`Admin` opens one autocommit
connection per instance, lazily; callers close it (or use it as a context manager).
Message payloads are only summarised, never evaluated: what is shown of a task's
arguments is Celery's ``argsrepr``/``kwargsrepr`` header, which tasks may redact.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any

import psycopg

from broker.queries import _parse

QUERIES: dict[str, str] = _parse(files("broker").joinpath("admin.sql").read_text("utf-8"))


@dataclass(frozen=True)
class QueueStats:
    """Messages of one queue by state; ``oldest_ready_age_s`` is None with nothing ready."""

    name: str
    ready: int = 0
    scheduled: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_ready_age_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Consumer:
    """A consumer row: one per consuming kombu connection (a worker, Flower...).

    ``nodes`` are the remote-control nodes it serves (a Celery worker's node name, such as
    ``celery@web-1``); empty for clients."""

    hostname: str
    pid: int
    started_at: datetime
    expires_in_s: float
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSummary:
    """What a stored payload says about its Celery task; empty strings when it cannot say."""

    task: str
    task_id: str
    eta: str | None
    argsrepr: str
    kwargsrepr: str


@dataclass(frozen=True)
class DeadLetter:
    id: int
    queue: str
    summary: TaskSummary
    reason: str
    deliveries: int
    died_at: datetime


@dataclass(frozen=True)
class ScheduledMessage:
    id: int
    queue: str
    priority: int
    visible_at: datetime
    summary: TaskSummary


def summarise(payload: str) -> TaskSummary:
    """The task name, id, ETA and argument representations of a stored payload; any shape
    of payload (malformed ones are why dead letters exist) gives a summary."""
    try:
        headers = json.loads(payload).get("headers")
    except (ValueError, AttributeError, RecursionError):
        headers = None
    if not isinstance(headers, dict):
        headers = {}
    return TaskSummary(task=_text(headers.get("task")), task_id=_text(headers.get("id")),
                       eta=_text(headers.get("eta")) or None,
                       argsrepr=_text(headers.get("argsrepr")),
                       kwargsrepr=_text(headers.get("kwargsrepr")))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class Admin:
    """Operator queries on one broker database."""

    def __init__(self, conninfo: str, connect_timeout: float = 5.0) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, application_name="pgjobs-admin",
                connect_timeout=max(1, int(self._connect_timeout)))
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.connect().execute(QUERIES[name], params or {}).fetchall()

    # -- queues and consumers ---------------------------------------------------------------

    def queue_stats(self) -> list[QueueStats]:
        """Every durable queue, and every queue holding messages, by name. Auto-delete
        queues (replies, events, remote control) are left out."""
        now = self._rows("database_now")[0][0]
        ready = {q: (n, oldest) for q, n, oldest in self._rows("queue_ready")}
        counts = {state: dict(self._rows(f"queue_{state}"))
                  for state in ("scheduled", "in_flight", "dead")}
        names = {row[0] for row in self._rows("queue_declared")}
        transient = {row[0] for row in self._rows("queue_transient")}
        names |= (set(ready) | set().union(*counts.values())) - transient
        return [_stats(name, ready.get(name), counts, now) for name in sorted(names)]

    def consumers(self) -> list[Consumer]:
        return [Consumer(*row[:4], nodes=tuple(name.rsplit(".", 2)[0] for name in row[4]))
                for row in self._rows("consumers")]

    # -- dead letters -----------------------------------------------------------------------

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        rows = self._rows("dead_list", {"queue": queue, "limit": limit})
        return [DeadLetter(id=r[0], queue=r[1], summary=summarise(r[2]), reason=r[3],
                           deliveries=r[4], died_at=r[5]) for r in rows]

    def select_dead(self, ids: Sequence[int] | None = None, queue: str | None = None,
                    older_than_days: float | None = None) -> list[int]:
        """Ids of the dead letters matching every given filter (None: no filter)."""
        params = {"ids": list(ids) if ids is not None else None, "queue": queue,
                  "older_than_days": older_than_days}
        return [row[0] for row in self._rows("dead_select", params)]

    def retry_dead(self, ids: Sequence[int]) -> int:
        """Move dead letters back to their queues, ready now; how many moved."""
        return int(self._rows("dead_retry", {"ids": list(ids)})[0][0])

    def purge_dead(self, ids: Sequence[int]) -> int:
        return self.connect().execute(QUERIES["dead_purge"], {"ids": list(ids)}).rowcount

    # -- ETA messages -----------------------------------------------------------------------

    def scheduled(self, queues: Iterable[str], limit: int = 1000) -> list[ScheduledMessage]:
        """Messages of ``queues`` waiting for their ETA in the table, soonest first."""
        rows = self._rows("scheduled_in", {"queues": list(queues), "limit": limit})
        return [ScheduledMessage(id=r[0], queue=r[1], priority=r[2], visible_at=r[3],
                                 summary=summarise(r[4])) for r in rows]


def _stats(name: str, ready: tuple[int, datetime] | None,
           counts: dict[str, dict[str, int]], now: datetime) -> QueueStats:
    oldest = None
    if ready is not None:
        oldest = max(0.0, (now - ready[1]).total_seconds())
    return QueueStats(name=name, ready=ready[0] if ready else 0,
                      scheduled=counts["scheduled"].get(name, 0),
                      in_flight=counts["in_flight"].get(name, 0),
                      dead=counts["dead"].get(name, 0), oldest_ready_age_s=oldest)


def chunks(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    """``ids`` in slices of ``size``: long retries and purges commit as they go."""
    for start in range(0, len(ids), size):
        yield ids[start:start + size]
