-- The result backend's SQL. Tables: celery_taskmeta and celery_tasksetmeta (Celery's own
-- shape, Alembic revision 0001), pgjobs_chord and pgjobs_chord_part (revision 0006).
-- Placeholders are psycopg's %(name)s; the wake-up channel and the waiters' advisory lock
-- are constants.

-- name: store_result
-- A ready state wakes waiters on commit, but only when some process LISTENs for results:
-- NOTIFY serialises every notifying commit on the server. Waiters hold the advisory lock
-- (pgjo, wait) shared (listen_lock); a store that can take it exclusively knows that nobody
-- waits, and holds it until its commit, so a waiter arriving meanwhile first sees the row.
-- When the lock is taken (a waiter, or another store at this instant) it notifies.
-- A row already SUCCESS is never written over (a task that ran again after its worker died
-- keeps its first result). synchronous_commit (NULL: the server's setting) applies to this
-- transaction only.
WITH stored AS (
    INSERT INTO celery_taskmeta AS t
        (task_id, status, result, date_done, traceback, children, name, args, kwargs,
         worker, retries, queue)
    VALUES (%(task_id)s, %(status)s, %(result)s, %(date_done)s, %(traceback)s, %(children)s,
            %(name)s, %(args)s, %(kwargs)s, %(worker)s, %(retries)s, %(queue)s)
    ON CONFLICT (task_id) DO UPDATE SET
        status = EXCLUDED.status, result = EXCLUDED.result, date_done = EXCLUDED.date_done,
        traceback = EXCLUDED.traceback, children = EXCLUDED.children, name = EXCLUDED.name,
        args = EXCLUDED.args, kwargs = EXCLUDED.kwargs, worker = EXCLUDED.worker,
        retries = EXCLUDED.retries, queue = EXCLUDED.queue
    WHERE t.status IS DISTINCT FROM 'SUCCESS'
    RETURNING task_id
)
SELECT
    (SELECT set_config('synchronous_commit',
                       coalesce(%(synchronous_commit)s, current_setting('synchronous_commit')),
                       true)) AS commit_mode,
    (SELECT count(pg_notify('pgjobs_results', stored.task_id)::text)
     FROM stored
     WHERE CASE WHEN %(ready)s
                THEN NOT pg_try_advisory_xact_lock(1885825647, 2002872692) ELSE false END
    ) AS notified

-- name: task_meta
SELECT task_id, status, result, date_done, traceback, children, name, args, kwargs, worker,
       retries, queue
FROM celery_taskmeta
WHERE task_id = ANY(%(task_ids)s)

-- name: task_exists
SELECT EXISTS (SELECT 1 FROM celery_taskmeta WHERE task_id = %(task_id)s)

-- name: forget
DELETE FROM celery_taskmeta WHERE task_id = %(task_id)s

-- name: save_group
INSERT INTO celery_tasksetmeta AS g (taskset_id, result, date_done)
VALUES (%(group_id)s, %(result)s, %(date_done)s)
ON CONFLICT (taskset_id) DO UPDATE SET result = EXCLUDED.result, date_done = EXCLUDED.date_done

-- name: restore_group
SELECT taskset_id, result, date_done FROM celery_tasksetmeta WHERE taskset_id = %(group_id)s

-- name: delete_group
DELETE FROM celery_tasksetmeta WHERE taskset_id = %(group_id)s

-- name: cleanup_tasks
DELETE FROM celery_taskmeta WHERE date_done < %(before)s

-- name: cleanup_groups
DELETE FROM celery_tasksetmeta WHERE date_done < %(before)s

-- name: listen
LISTEN pgjobs_results

-- name: listen_lock
-- Held (shared, for the session) by every LISTEN connection: stores notify while it is held.
-- It waits for stores that found no waiter to commit; lock_timeout bounds that wait.
SELECT pg_advisory_lock_shared(1885825647, 2002872692)

-- name: listen_lock_timeout
SET LOCAL lock_timeout = '5s'

-- name: chord_set_size
-- A frozen chord applied again reuses its group id: a fired chord starts over.
INSERT INTO pgjobs_chord AS c (group_id, size) VALUES (%(group_id)s, %(size)s)
ON CONFLICT (group_id) DO UPDATE SET
    size = EXCLUDED.size,
    extra = CASE WHEN c.fired_at IS NULL THEN c.extra ELSE 0 END,
    done = CASE WHEN c.fired_at IS NULL THEN c.done ELSE 0 END,
    fired_at = NULL

-- name: chord_add_part
-- A part that replaced itself with more tasks (Task.replace) makes the chord wait for one more.
INSERT INTO pgjobs_chord AS c (group_id, extra) VALUES (%(group_id)s, 1)
ON CONFLICT (group_id) DO UPDATE SET extra = c.extra + 1

-- name: chord_lock
-- Serialises the parts of one chord: each part's transaction holds this row until it commits.
INSERT INTO pgjobs_chord AS c (group_id) VALUES (%(group_id)s)
ON CONFLICT (group_id) DO UPDATE SET group_id = c.group_id
RETURNING fired_at IS NOT NULL AS fired

-- name: chord_count_part
-- Counts a part once, however often it runs; the part that makes the count complete fires.
WITH part AS (
    INSERT INTO pgjobs_chord_part (group_id, part_key, group_index, state, result)
    VALUES (%(group_id)s, %(part_key)s, %(group_index)s, %(state)s, %(result)s)
    ON CONFLICT (group_id, part_key) DO NOTHING
    RETURNING 1
)
UPDATE pgjobs_chord c SET
    done = c.done + 1,
    fired_at = CASE WHEN c.size IS NOT NULL AND c.done + 1 >= c.size + c.extra
                    THEN now() END
WHERE c.group_id = %(group_id)s AND EXISTS (SELECT 1 FROM part)
RETURNING fired_at IS NOT NULL AS fire

-- name: chord_parts
SELECT part_key, state, result FROM pgjobs_chord_part
WHERE group_id = %(group_id)s
ORDER BY group_index NULLS LAST, arrival

-- name: chord_drop_parts
DELETE FROM pgjobs_chord_part WHERE group_id = %(group_id)s

-- name: store_results
-- The results pool children handed to the worker's main process (broker.results.handoff),
-- stored in the transaction that acknowledges their messages. As store_result: a row already
-- SUCCESS stays, and the stored rows wake the waiters on commit when some process waits.
-- These rows reach the table later than the child made them, so one that is older than the
-- row there (a WorkerLostError or a revoke, stored by the main process meanwhile) does not
-- replace it, unless it is a success, which would have been there first.
-- At most one row per task id (ON CONFLICT may not touch a row twice).
WITH stored AS (
    INSERT INTO celery_taskmeta AS t
        (task_id, status, result, date_done, traceback, children, name, args, kwargs,
         worker, retries, queue)
    SELECT r.task_id, r.status, convert_to(r.result, 'UTF8'), r.date_done, r.traceback,
           convert_to(r.children, 'UTF8'), r.name, convert_to(r.args, 'UTF8'),
           convert_to(r.kwargs, 'UTF8'), r.worker, r.retries, r.queue
    FROM json_to_recordset(%(rows)s::json) AS r
        (task_id text, status text, result text, date_done timestamp, traceback text,
         children text, name text, args text, kwargs text, worker text, retries integer,
         queue text)
    ON CONFLICT (task_id) DO UPDATE SET
        status = EXCLUDED.status, result = EXCLUDED.result, date_done = EXCLUDED.date_done,
        traceback = EXCLUDED.traceback, children = EXCLUDED.children, name = EXCLUDED.name,
        args = EXCLUDED.args, kwargs = EXCLUDED.kwargs, worker = EXCLUDED.worker,
        retries = EXCLUDED.retries, queue = EXCLUDED.queue
    WHERE t.status IS DISTINCT FROM 'SUCCESS'
      AND (EXCLUDED.status = 'SUCCESS' OR t.date_done IS NULL
           OR EXCLUDED.date_done >= t.date_done)
    RETURNING task_id
)
SELECT count(pg_notify('pgjobs_results', stored.task_id)::text)
FROM stored
WHERE NOT pg_try_advisory_xact_lock(1885825647, 2002872692)
