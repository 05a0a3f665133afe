-- Every statement of pgjobs' operator commands and durable revokes, by name; parsed once by
-- config/ops/queries.py. Values are always bound parameters.
--
-- Tables read: pg_locks and pg_stat_activity (the beat leader's lock connection),
-- pgjobs_beat_tick, celery_taskmeta, pgjobs_revoked_task. Written: pgjobs_revoked_task.

-- name: beat_leader
-- The beat holding the leader lock (beat/leadership.py), and how long ago its lock
-- connection last ran a statement: the leader confirms its lock before every pass, so this
-- is the age of its last pass. Seeing another session's query_start needs the same role,
-- a superuser or pg_read_all_stats.
SELECT a.application_name,
       EXTRACT(EPOCH FROM statement_timestamp() - a.query_start)::float8 AS last_pass_age_s
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = %(key1)s AND l.objid = %(key2)s
  AND l.objsubid = 2 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: beat_last_dispatch
-- The most recent tick a leader sent.
SELECT entry_name, sent_at FROM pgjobs_beat_tick
WHERE sent_at IS NOT NULL
ORDER BY claimed_at DESC
LIMIT 1;

-- name: revoke_record
INSERT INTO pgjobs_revoked_task (task_id)
SELECT unnest(%(ids)s::text[])
ON CONFLICT (task_id) DO NOTHING;

-- name: revoked_since
-- Revoked ids recorded at or after %(since)s (NULL: all), oldest first.
SELECT task_id, revoked_at FROM pgjobs_revoked_task
WHERE %(since)s::timestamptz IS NULL OR revoked_at >= %(since)s::timestamptz
ORDER BY revoked_at;

-- name: failed_list
-- Failed tasks in the result backend, newest first. date_done holds UTC without a zone.
SELECT task_id, name, date_done, traceback, queue, retries, worker
FROM celery_taskmeta
WHERE status = 'FAILURE'
  AND (%(task)s::text IS NULL OR name = %(task)s::text)
  AND (%(since)s::timestamp IS NULL OR date_done >= %(since)s::timestamp)
ORDER BY date_done DESC NULLS LAST, id DESC
LIMIT %(limit)s;

-- name: failed_for_retry
-- What a retry re-sends: name, encoded arguments and queue of the given failed tasks (NULL:
-- all), optionally of one task name.
SELECT task_id, name, args, kwargs, queue
FROM celery_taskmeta
WHERE status = 'FAILURE'
  AND (%(ids)s::text[] IS NULL OR task_id = ANY(%(ids)s::text[]))
  AND (%(task)s::text IS NULL OR name = %(task)s::text)
ORDER BY id;

-- name: task_outcomes
-- Stored results per task name and state (for metrics), finished since %(since)s (UTC).
SELECT COALESCE(name, ''), status, count(*)
FROM celery_taskmeta
WHERE date_done >= %(since)s::timestamp
GROUP BY 1, 2;

-- name: failed_forget
-- A failed result whose retry was sent in the same transaction: it is failed no more.
DELETE FROM celery_taskmeta WHERE task_id = %(task_id)s AND status = 'FAILURE';
