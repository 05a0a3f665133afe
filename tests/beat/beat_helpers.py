"""Helpers for beat tests: polling, database peeks, draining a broker queue."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from kombu.simple import SimpleQueue
from psycopg import sql

BIN = Path(sys.executable).parent


def beat_command(schedule_file: Path) -> list[str]:
    """``celery -A config beat`` as the Procfile runs it, without a pidfile."""
    return [str(BIN / "celery"), "-A", "config", "beat", "--pidfile=", "-l", "info",
            "-s", str(schedule_file)]


def rows(db_url: str, statement: str | sql.Composable, params: dict | None = None) -> list[tuple]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        cursor = connection.execute(statement, params or {})
        return cursor.fetchall() if cursor.description else []


def ticks(db_url: str, entry: str | None = None) -> list[tuple]:
    """(entry_name, due_at, task_id, leader, sent_at) of every claimed tick, by due time."""
    return rows(db_url, "SELECT entry_name, due_at, task_id, leader, sent_at FROM "
                "pgjobs_beat_tick WHERE %(entry)s::text IS NULL OR entry_name = %(entry)s "
                "ORDER BY due_at", {"entry": entry})


def leader_application(db_url: str) -> str | None:
    """application_name of the connection holding the beat leader lock, if any."""
    found = rows(db_url, "SELECT a.application_name, a.pid FROM pg_locks l JOIN "
                 "pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                 "AND l.classid = x'70676A6F'::int AND l.objid = x'62656174'::int AND l.granted "
                 "AND a.datname = current_database()")
    return found[0][0] if found else None


def terminate_leader_connection(db_url: str) -> str:
    """pg_terminate_backend on the lock connection; returns its application_name."""
    found = rows(db_url, "SELECT a.application_name, pg_terminate_backend(a.pid) FROM "
                 "pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE "
                 "l.locktype = 'advisory' AND l.classid = x'70676A6F'::int "
                 "AND l.objid = x'62656174'::int AND l.granted "
                 "AND a.datname = current_database()")
    assert found, "no beat leader holds the lock"
    return found[0][0]


def snapshot(db_url: str) -> dict[str, list[tuple]]:
    """Every row of the schedule tables, to prove a command wrote nothing."""
    tables = ("celery_periodictask", "celery_periodictaskchanged", "celery_crontabschedule",
              "celery_intervalschedule", "celery_clockedschedule", "pgjobs_beat_policy",
              "pgjobs_beat_tick")
    return {t: rows(db_url, f"SELECT * FROM {t} ORDER BY 1") for t in tables}  # noqa: S608


def drain(app: Any, queue: str, idle: float = 2.0) -> list[dict]:
    """Take every message waiting in ``queue`` through the app's broker; their headers."""
    found: list[dict] = []
    with app.connection_for_read() as connection:
        simple = SimpleQueue(connection, queue)
        try:
            while True:
                try:
                    message = simple.get(block=True, timeout=idle)
                except simple.Empty:
                    return found
                found.append(dict(message.headers))
                message.ack()
        finally:
            simple.close()


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def beat_logs(folder: Path) -> str:
    """The output of every beat process a test started."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("beat-*.log")))


def expire_lease(db_url: str) -> None:
    """Age the leader's lease into the past, as if its holder had stopped renewing it."""
    rows(db_url, "UPDATE pgjobs_beat_leader SET expires_at = now() - interval '1 second'")


def lease(db_url: str) -> tuple | None:
    """(holder, backend pid) of the leader lease row, if any."""
    found = rows(db_url, "SELECT holder, pid FROM pgjobs_beat_leader")
    return found[0] if found else None
