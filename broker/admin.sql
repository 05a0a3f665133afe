-- The broker's operator statements, by name: queue depths, consumers, dead letters, ETA
-- messages. Parsed once by broker/admin.py. Values are always bound parameters.
--
-- Tables read: pgjobs_broker_message, pgjobs_broker_queue, pgjobs_broker_consumer,
-- pgjobs_broker_dead_letter. Tables written: pgjobs_broker_message (dead_retry),
-- pgjobs_broker_dead_letter (dead_retry, dead_purge).
--
-- Cost on a large backlog: each count reads one partial index of its own state
-- (pgjobs_broker_message_ready, _delayed_queue, _held; pgjobs_broker_dead_letter_queue),
-- index-only where the visibility map allows, so no statement here reads the whole table.

-- name: queue_ready
-- Ready messages per queue, and when the longest-waiting one became visible.
SELECT queue, count(*), min(visible_at)
FROM pgjobs_broker_message
WHERE consumer IS NULL AND NOT delayed
GROUP BY queue;

-- name: queue_scheduled
-- Messages waiting for their ETA, per queue.
SELECT queue, count(*) FROM pgjobs_broker_message WHERE delayed GROUP BY queue;

-- name: queue_in_flight
-- Messages held by a consumer, per queue.
SELECT queue, count(*) FROM pgjobs_broker_message WHERE consumer IS NOT NULL GROUP BY queue;

-- name: queue_dead
SELECT queue, count(*) FROM pgjobs_broker_dead_letter GROUP BY queue;

-- name: queue_declared
-- Durable declared queues (auto-delete ones are replies, events and remote control).
SELECT name FROM pgjobs_broker_queue WHERE NOT auto_delete;

-- name: queue_transient
SELECT name FROM pgjobs_broker_queue WHERE auto_delete;

-- name: consumers
-- Consumers, oldest first; seconds until their lease lapses (negative: lapsed); the kombu
-- remote-control (pidbox) queues they consume, replies excluded: '<node>.<mailbox>.pidbox'
-- names a Celery worker's node ('celery@web-1.celery.pidbox'). Clients (inspect, Flower's
-- event receiver) consume only reply and event queues.
SELECT c.hostname, c.pid, c.started_at,
       EXTRACT(EPOCH FROM c.expires_at - statement_timestamp())::float8 AS expires_in_s,
       ARRAY(SELECT s.queue FROM pgjobs_broker_subscription s
             WHERE s.consumer = c.id AND s.queue LIKE '%%.pidbox'
               AND s.queue NOT LIKE '%%.reply.%%'
             ORDER BY s.queue) AS mailboxes
FROM pgjobs_broker_consumer c
ORDER BY c.started_at, c.hostname, c.pid;

-- name: database_now
SELECT statement_timestamp();

-- name: dead_list
SELECT id, queue, payload, reason, deliveries, died_at
FROM pgjobs_broker_dead_letter
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
ORDER BY id
LIMIT %(limit)s;

-- name: dead_select
-- Ids of the dead letters matching the filters: the given ids (NULL: any), a queue (NULL:
-- any), died more than %(older_than_days)s days ago (NULL: any age).
SELECT id FROM pgjobs_broker_dead_letter
WHERE (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(older_than_days)s::float8 IS NULL
       OR died_at < statement_timestamp() - make_interval(secs => %(older_than_days)s * 86400))
ORDER BY id;

-- name: dead_retry
-- Put dead letters back in their queue as new, ready messages (deliveries start again at
-- zero), and wake the queues. Returns how many went back.
WITH moved AS (
    DELETE FROM pgjobs_broker_dead_letter WHERE id = ANY(%(ids)s::bigint[])
    RETURNING queue, priority, payload
), inserted AS (
    INSERT INTO pgjobs_broker_message (queue, priority, payload)
    SELECT queue, priority, payload FROM moved
    RETURNING queue
)
SELECT
    (SELECT count(*) FROM inserted),
    (SELECT count(pg_notify('pgjobs_' || md5(queue), '')::text)
     FROM (SELECT DISTINCT queue FROM inserted) AS woken);

-- name: dead_purge
DELETE FROM pgjobs_broker_dead_letter WHERE id = ANY(%(ids)s::bigint[]);

-- name: scheduled_in
-- Messages of the given queues waiting for their ETA, soonest first.
SELECT id, queue, priority, visible_at, payload
FROM pgjobs_broker_message
WHERE delayed AND queue = ANY(%(queues)s::text[])
ORDER BY visible_at, id
LIMIT %(limit)s;
