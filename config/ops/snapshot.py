"""What ``pgjobs status``, ``metrics`` and ``health`` read: one pass over the database.

The JSON shape (``Snapshot.as_dict``) is the documented output of ``pgjobs status --json``:

- ``queues``: ``[{name, ready, scheduled, in_flight, dead, oldest_ready_age_s}]`` by name;
- ``workers``: live workers, ``[{name, hostname, pid, started_at, heartbeat_age_s}]``
  (``name`` is the node name, ``celery@web-1``);
- ``beat``: ``{leader, last_pass_age_s, last_dispatch: {entry, at} | null}``, or null
  when no beat holds the leader lock (``last_pass_age_s`` is null when the leader's
  session activity is hidden from this role);
- ``schedule``: the next five runs, ``[{name, task, at}]``, soonest first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from beat.leadership import LOCK_KEYS
from beat.upcoming import NextRun, next_runs
from broker.admin import Admin, QueueStats
from config.ops.queries import QUERIES


@dataclass(frozen=True)
class Worker:
    name: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_age_s: float


@dataclass(frozen=True)
class Beat:
    """The leading beat. ``last_pass_age_s`` is None when this role may not see the
    leader's session activity (another role, without ``pg_read_all_stats``)."""

    leader: str
    last_pass_age_s: float | None
    last_dispatch: dict[str, Any] | None


@dataclass
class Snapshot:
    queues: list[QueueStats] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    beat: Beat | None = None
    schedule: list[NextRun] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queues": [queue.as_dict() for queue in self.queues],
            "workers": [asdict(worker) for worker in self.workers],
            "beat": asdict(self.beat) if self.beat else None,
            "schedule": [asdict(run) for run in self.schedule],
        }


def workers(admin: Admin, visibility_timeout: float) -> list[Worker]:
    """Live workers: consumers serving a remote-control node, whose lease runs (clients
    such as ``celery inspect`` or Flower are left out). The heartbeat's age is read from
    the lease: a heartbeat sets it ``VISIBILITY_TIMEOUT`` ahead (workers run with the same
    setting as this command)."""
    return [Worker(node, c.hostname, c.pid, c.started_at,
                   round(max(0.0, visibility_timeout - c.expires_in_s), 3))
            for c in admin.consumers() if c.expires_in_s > 0 for node in c.nodes]


def beat(conn: psycopg.Connection) -> Beat | None:
    """The leading beat, or None when no beat holds the lock."""
    row = conn.execute(QUERIES["beat_leader"], LOCK_KEYS).fetchone()
    if row is None:
        return None
    last = conn.execute(QUERIES["beat_last_dispatch"]).fetchone()
    dispatch = {"entry": last[0], "at": last[1]} if last else None
    age = None if row[1] is None else round(max(0.0, row[1]), 3)
    return Beat(leader=row[0] or "", last_pass_age_s=age, last_dispatch=dispatch)


def schedule(engine: sa.Engine, limit: int = 5) -> list[NextRun]:
    with Session(engine) as session:
        return next_runs(session, datetime.now(UTC), limit)


def take(admin: Admin, engine: sa.Engine, visibility_timeout: float) -> Snapshot:
    return Snapshot(queues=admin.queue_stats(), workers=workers(admin, visibility_timeout),
                    beat=beat(admin.connect()), schedule=schedule(engine))
