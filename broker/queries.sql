-- Every statement the broker runs, by name. Parsed once by broker/queries.py.
-- Parameters are psycopg named placeholders; names of queues, exchanges and routing keys are
-- always bound, never interpolated. Identifiers ({channel}) are composed with psycopg.sql.
-- A consumer is woken through the channel 'pgjobs_' || md5(queue) (39 bytes, any queue name).
--
-- Tables touched: pgjobs_broker_consumer, pgjobs_broker_message, pgjobs_broker_queue,
-- pgjobs_broker_exchange, pgjobs_broker_binding, pgjobs_broker_dead_letter.

-- name: schema_present
SELECT to_regclass('pgjobs_broker_message') IS NOT NULL;

-- name: consumer_beat
-- Register or renew a consumer: its lease on every message it holds now runs until expires_at.
-- "inserted" is true when the row had gone (its lease lapsed and another consumer rescued it).
INSERT INTO pgjobs_broker_consumer (id, hostname, pid, expires_at)
VALUES (%(consumer)s, %(hostname)s, %(pid)s,
        statement_timestamp() + make_interval(secs => %(visibility_timeout)s))
ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
RETURNING (xmax = 0) AS inserted;

-- name: consumer_expired
-- Consumers whose heartbeat is older than their visibility timeout; locked so that two
-- rescuers never fight over one.
SELECT id FROM pgjobs_broker_consumer
WHERE expires_at < COALESCE(%(now)s::timestamptz, statement_timestamp())
ORDER BY expires_at
FOR UPDATE SKIP LOCKED;

-- name: consumer_release_all
-- Put back every message held by the given consumers, and wake their queues.
WITH released AS (
    UPDATE pgjobs_broker_message SET consumer = NULL
    WHERE consumer = ANY(%(consumers)s::uuid[])
    RETURNING queue
)
SELECT count(pg_notify('pgjobs_' || md5(queue), '')::text)
FROM (SELECT DISTINCT queue FROM released) AS woken;

-- name: consumer_drop_queues
-- Delete the auto-delete queues owned by the given consumers, with their bindings and messages.
WITH dropped AS (
    DELETE FROM pgjobs_broker_queue
    WHERE owner = ANY(%(consumers)s::uuid[]) AND auto_delete
    RETURNING name
), unbound AS (
    DELETE FROM pgjobs_broker_binding b USING dropped d WHERE b.queue = d.name
)
DELETE FROM pgjobs_broker_message m USING dropped d WHERE m.queue = d.name;

-- name: consumer_delete
DELETE FROM pgjobs_broker_consumer WHERE id = ANY(%(consumers)s::uuid[]);

-- name: claim
-- Claim up to %(limit)s visible messages for one consumer in one statement: queues in the order
-- given, then priority (higher first), then publication order. Each queue is read through
-- pgjobs_broker_message_ready; SKIP LOCKED keeps concurrent claimers from waiting on each other.
WITH wanted AS (
    SELECT queue, position
    FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS w (queue, position)
), picked AS (
    SELECT m.id, w.position
    FROM wanted w
    CROSS JOIN LATERAL (
        SELECT id, priority
        FROM pgjobs_broker_message
        WHERE queue = w.queue AND consumer IS NULL AND NOT delayed
          AND visible_at <= COALESCE(%(now)s::timestamptz, statement_timestamp())
        ORDER BY priority DESC, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) m
    ORDER BY w.position, m.priority DESC, m.id
    LIMIT %(limit)s
)
UPDATE pgjobs_broker_message m
SET consumer = %(consumer)s, deliveries = m.deliveries + 1
FROM picked
WHERE m.id = picked.id
RETURNING m.id, m.queue, m.deliveries, m.payload, picked.position, m.priority;

-- name: publish
-- Route one message through its exchange (the default exchange '' names the queue itself),
-- insert one copy per target queue, and wake the queues whose copy is visible now.
-- Returns the number of copies inserted.
WITH target AS (
    SELECT %(routing_key)s::text AS queue
    WHERE %(exchange)s::text = ''
    UNION
    SELECT b.queue
    FROM pgjobs_broker_binding b
    LEFT JOIN pgjobs_broker_exchange e ON e.name = b.exchange
    WHERE b.exchange = %(exchange)s::text
      AND CASE COALESCE(e.type, 'direct')
          WHEN 'fanout' THEN true
          WHEN 'topic' THEN %(routing_key)s::text ~ b.pattern
          ELSE b.routing_key = %(routing_key)s::text
      END
), inserted AS (
    INSERT INTO pgjobs_broker_message (queue, priority, visible_at, delayed, payload)
    SELECT queue, %(priority)s,
           COALESCE(%(visible_at)s::timestamptz, statement_timestamp()),
           COALESCE(%(visible_at)s::timestamptz > statement_timestamp(), false),
           %(payload)s
    FROM target
    RETURNING queue, delayed
)
SELECT
    (SELECT count(*) FROM inserted),
    (SELECT count(pg_notify('pgjobs_' || md5(queue), '')::text)
     FROM (SELECT DISTINCT queue FROM inserted WHERE NOT delayed) AS ready);

-- name: promote
-- Delayed (ETA) messages whose time has come join their queue's ready rows; their queues
-- are woken. Run by every consumer each polling interval; SKIP LOCKED keeps them apart.
WITH due AS (
    SELECT id FROM pgjobs_broker_message
    WHERE delayed AND visible_at <= COALESCE(%(now)s::timestamptz, statement_timestamp())
    ORDER BY visible_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE pgjobs_broker_message m SET delayed = false FROM due WHERE m.id = due.id
    RETURNING m.queue
)
SELECT
    (SELECT count(*) FROM promoted),
    (SELECT count(pg_notify('pgjobs_' || md5(queue), '')::text)
     FROM (SELECT DISTINCT queue FROM promoted) AS woken);

-- name: ack
DELETE FROM pgjobs_broker_message WHERE id = ANY(%(ids)s::bigint[]);

-- name: release
-- Return held messages to their queues at once (requeue, channel close), and wake the queues.
-- Only the holder gives a message back: one whose lease lapsed and was rescued may be running
-- on another consumer by now, and releasing it would hand it to a third.
WITH released AS (
    UPDATE pgjobs_broker_message SET consumer = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND consumer = %(consumer)s
    RETURNING queue
)
SELECT count(pg_notify('pgjobs_' || md5(queue), '')::text)
FROM (SELECT DISTINCT queue FROM released) AS woken;

-- name: dead_letter
-- Move one message to the dead-letter table with the reason.
WITH moved AS (
    DELETE FROM pgjobs_broker_message WHERE id = %(id)s
    RETURNING id, queue, priority, deliveries, payload, created_at
)
INSERT INTO pgjobs_broker_dead_letter (id, queue, priority, deliveries, payload, reason, created_at)
SELECT id, queue, priority, deliveries, payload, %(reason)s, created_at FROM moved
ON CONFLICT (id) DO NOTHING;

-- name: size
-- Messages waiting in a queue (held ones excluded, delayed ETA ones included).
SELECT count(*) FROM pgjobs_broker_message WHERE queue = %(queue)s AND consumer IS NULL;

-- name: purge
DELETE FROM pgjobs_broker_message WHERE queue = %(queue)s AND consumer IS NULL;

-- name: queue_declare
INSERT INTO pgjobs_broker_queue (name, auto_delete) VALUES (%(queue)s, %(auto_delete)s)
ON CONFLICT (name) DO NOTHING;

-- name: queue_exists
SELECT EXISTS (SELECT 1 FROM pgjobs_broker_queue WHERE name = %(queue)s)
    OR EXISTS (SELECT 1 FROM pgjobs_broker_message WHERE queue = %(queue)s);

-- name: queue_own
-- A consumer starts consuming an auto-delete queue: the queue now lives as long as it does.
UPDATE pgjobs_broker_queue SET owner = %(consumer)s WHERE name = %(queue)s AND auto_delete;

-- name: queue_disown
-- The owner stopped consuming an auto-delete queue: delete it, with its bindings and messages.
WITH dropped AS (
    DELETE FROM pgjobs_broker_queue
    WHERE name = %(queue)s AND owner = %(consumer)s AND auto_delete
    RETURNING name
), unbound AS (
    DELETE FROM pgjobs_broker_binding b USING dropped d WHERE b.queue = d.name
)
DELETE FROM pgjobs_broker_message m USING dropped d WHERE m.queue = d.name;

-- name: queue_delete
WITH unbound AS (
    DELETE FROM pgjobs_broker_binding WHERE queue = %(queue)s
), emptied AS (
    DELETE FROM pgjobs_broker_message WHERE queue = %(queue)s
)
DELETE FROM pgjobs_broker_queue WHERE name = %(queue)s;

-- name: exchange_declare
INSERT INTO pgjobs_broker_exchange (name, type) VALUES (%(exchange)s, %(type)s)
ON CONFLICT (name) DO NOTHING;

-- name: exchange_type
SELECT type FROM pgjobs_broker_exchange WHERE name = %(exchange)s;

-- name: exchange_list
SELECT name FROM pgjobs_broker_exchange ORDER BY name;

-- name: exchange_delete
WITH unbound AS (
    DELETE FROM pgjobs_broker_binding WHERE exchange = %(exchange)s
)
DELETE FROM pgjobs_broker_exchange WHERE name = %(exchange)s;

-- name: bind
INSERT INTO pgjobs_broker_binding (exchange, routing_key, queue, pattern)
VALUES (%(exchange)s, %(routing_key)s, %(queue)s, %(pattern)s)
ON CONFLICT (exchange, routing_key, queue) DO NOTHING;

-- name: unbind
DELETE FROM pgjobs_broker_binding
WHERE exchange = %(exchange)s AND routing_key = %(routing_key)s AND queue = %(queue)s;

-- name: bindings_of_exchange
SELECT routing_key, pattern, queue FROM pgjobs_broker_binding
WHERE exchange = %(exchange)s ORDER BY routing_key, queue;

-- name: bindings_all
SELECT queue, exchange, routing_key FROM pgjobs_broker_binding ORDER BY exchange, routing_key, queue;

-- name: listen
LISTEN {channel};

-- name: unlisten
UNLISTEN {channel};
