"""Every SQL statement beat runs, named, in one place.

Tables: ``pgjobs_beat_tick`` and ``pgjobs_beat_policy`` (migration 0003),
``pgjobs_beat_leader`` (migration 0005), and
sqlalchemy-celery-beat's ``celery_periodictask``, ``celery_periodictaskchanged`` and
schedule tables (migration 0001). All values are bound parameters.
"""

from __future__ import annotations

from sqlalchemy import text

# --- leadership (run on each beat's dedicated lock connection) ------------------------------
# The lock's two int4 keys are bound as :key1 and :key2 (see beat.leadership.LOCK_KEYS).

# Each statement below finds the lock's holder the same way: the granted advisory lock on
# these keys in this database, in pg_locks.

TAKE_LEAD = text(
    "WITH attempt AS (SELECT pg_try_advisory_lock(:key1, :key2) AS taken)"
    " INSERT INTO pgjobs_beat_leader (id, holder, pid, elected_at, expires_at)"
    " SELECT 1, :holder, pg_backend_pid(), now(), now() + make_interval(secs => :lease)"
    " FROM attempt WHERE taken"
    " ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, pid = EXCLUDED.pid,"
    " elected_at = EXCLUDED.elected_at, expires_at = EXCLUDED.expires_at"
    " RETURNING expires_at"
)
"""Take the leader lock for this session and write this session's lease, in one statement;
no row back when another session holds the lock."""

RENEW_LEASE = text(
    "UPDATE pgjobs_beat_leader SET expires_at = now() + make_interval(secs => :lease)"
    " WHERE id = 1 AND holder = :holder AND pid = pg_backend_pid() AND expires_at > now()"
    " AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory'"
    " AND l.pid = pg_backend_pid() AND l.classid = :key1 AND l.objid = :key2"
    " AND l.objsubid = 2 AND l.granted)"
    " RETURNING expires_at"
)
"""Extend this session's lease; no row back unless it still holds both the lock and an
unexpired lease. It runs first in every transaction that acts as the leader, so a lapsed
or deposed leader's transaction acts on nothing."""

DEPOSE_EXPIRED = text(
    "SELECT l.pid, COALESCE(b.holder, 'an unknown session'),"
    " pg_terminate_backend(l.pid, :wait_ms)"
    " FROM pg_locks l LEFT JOIN pgjobs_beat_leader b ON b.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.classid = :key1 AND l.objid = :key2"
    " AND l.objsubid = 2 AND l.granted"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND NOT EXISTS (SELECT 1 FROM pgjobs_beat_leader WHERE pid = l.pid"
    " AND expires_at > now())"
)
"""End the session holding the lock when it has no unexpired lease (a frozen, paused or
stuck leader), which frees the lock; wait up to ``wait_ms`` for it to end. One row per
session ended: (backend pid, holder, whether it ended in time)."""

LEASE_HOLDER = text(
    "SELECT b.holder FROM pgjobs_beat_leader b JOIN pg_locks l ON l.pid = b.pid"
    " WHERE l.locktype = 'advisory' AND l.classid = :key1 AND l.objid = :key2"
    " AND l.objsubid = 2 AND l.granted"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
"""Who leads now, for the standby's log line."""

# --- ticks ---------------------------------------------------------------------------------

CLAIM_TICK = text(
    "INSERT INTO pgjobs_beat_tick (entry_name, due_at, task_id, leader, sent_at)"
    " VALUES (:entry_name, :due_at, :task_id, :leader, CASE WHEN :sent THEN now() END)"
    " ON CONFLICT (entry_name, due_at) DO NOTHING RETURNING task_id"
)
"""Claim one tick; no row back means another leader already fired it."""

MARK_SENT = text(
    "UPDATE pgjobs_beat_tick SET sent_at = now() WHERE entry_name = :entry_name"
    " AND due_at = :due_at"
)

UNCLAIM_TICK = text(
    "DELETE FROM pgjobs_beat_tick WHERE entry_name = :entry_name AND due_at = :due_at"
    " AND sent_at IS NULL"
)
"""Give back a tick whose message could not be published, so that it is tried again."""

ADVANCE_ENTRY = text(
    "UPDATE celery_periodictask SET"
    " last_run_at = GREATEST(COALESCE(last_run_at, :due_at), :due_at),"
    " total_run_count = total_run_count + :fired,"
    " enabled = enabled AND NOT one_off"
    " WHERE name = :entry_name"
)
"""Persist how far an entry got (fired or skipped), with the tick; a one-off entry is done.

A plain UPDATE fires no ORM event, so beat's own progress never looks like an edit."""

ANCHOR_ENTRY = text(
    "UPDATE celery_periodictask SET last_run_at = COALESCE(last_run_at, :at)"
    " WHERE name = :entry_name RETURNING last_run_at"
)
"""Persist where an entry that never ran starts counting; a value already stored wins."""

RESTORE_ENTRY = text(
    "UPDATE celery_periodictask SET last_run_at = :last_run_at,"
    " total_run_count = GREATEST(total_run_count - 1, 0),"
    " enabled = CASE WHEN one_off THEN :enabled ELSE enabled END"
    " WHERE name = :entry_name"
)
"""Undo ADVANCE_ENTRY for a tick given back. Only a one-off entry's ``enabled`` was changed
by it: a pause committed meanwhile by an operator must stay."""

UNSENT_TICKS = text(
    "SELECT entry_name, due_at, leader FROM pgjobs_beat_tick WHERE sent_at IS NULL"
    " AND claimed_at > now() - interval '1 day' ORDER BY due_at"
)
"""Ticks a previous leader claimed but never confirmed as published."""

PRUNE_TICKS = text(
    "DELETE FROM pgjobs_beat_tick WHERE claimed_at < now() - make_interval(days => :days)"
)

MISSING_TABLES = text(
    "SELECT name FROM unnest(CAST(:names AS text[])) AS t(name) WHERE to_regclass(name) IS NULL"
)
"""Which of ``names`` the database lacks: beat refuses to start on an unmigrated database."""

# --- schedule ------------------------------------------------------------------------------

CHANGE_MARKER = text("SELECT last_update FROM celery_periodictaskchanged WHERE id = 1")

BUMP_CHANGE_MARKER = text(
    "INSERT INTO celery_periodictaskchanged (id, last_update) VALUES (1, clock_timestamp())"
    " ON CONFLICT (id) DO UPDATE SET last_update = clock_timestamp()"
)
"""Tell every beat the schedule changed; bulk UPDATEs fire no ORM event, so writers call this."""

CATCH_UP_POLICIES = text(
    "SELECT t.name, p.catch_up FROM pgjobs_beat_policy p"
    " JOIN celery_periodictask t ON t.id = p.periodic_task_id"
)

SET_CATCH_UP = text(
    "INSERT INTO pgjobs_beat_policy (periodic_task_id, catch_up) VALUES (:task_id, :catch_up)"
    " ON CONFLICT (periodic_task_id) DO UPDATE SET catch_up = EXCLUDED.catch_up"
)

SET_ENABLED = text(
    "UPDATE celery_periodictask SET enabled = :enabled, date_changed = now()"
    " WHERE name = ANY(:names) RETURNING name"
)

RESUME = text(
    "UPDATE celery_periodictask SET enabled = true, date_changed = now(),"
    " last_run_at = CASE WHEN enabled THEN last_run_at ELSE now() END"
    " WHERE name = ANY(:names) RETURNING name"
)
"""Resume from now: runs missed while paused are not caught up. An entry that was not paused
keeps its progress, so resuming it drops no run that is due."""

REMOVE = text("DELETE FROM celery_periodictask WHERE name = ANY(:names) RETURNING name")

EXISTING_NAMES = text("SELECT name FROM celery_periodictask WHERE name = ANY(:names)")

SYNC_LOCK = text("SELECT pg_advisory_xact_lock(:key1, :key2)")
"""Serialise default-entry sync between beats starting together and ``pgjobs migrate``."""
