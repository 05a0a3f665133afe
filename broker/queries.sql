-- Every statement the broker runs, by name. Parsed once by broker/queries.py.
-- Parameters are psycopg named placeholders; names of queues, exchanges and routing keys are
-- always bound, never interpolated. Identifiers ({channel}) are composed with psycopg.sql.
-- A consumer is woken through the channel 'pgjobs_' || md5(queue) (39 bytes, any queue name),
-- always by pgjobs_broker_wake() (broker/schema_wakeups.sql) or, for one queue, by
-- pgjobs_broker_wake_one() (broker/schema_wake_one.sql), which notify only the queues
-- whose consumers may be waiting: payload '' for messages ready now, 'eta:<seconds>' for a
-- delayed one falling due in that many seconds. Advisory locks (1885825649, hashtext(queue))
-- order a consumer that starts waiting on a queue against the publishers to it (see there).
--
-- Tables touched: pgjobs_broker_consumer, pgjobs_broker_message, pgjobs_broker_queue,
-- pgjobs_broker_subscription, pgjobs_broker_exchange, pgjobs_broker_binding,
-- pgjobs_broker_dead_letter.

-- name: schema_present
-- The broker tables, and the newest part of the schema this code uses (migration 0011).
SELECT to_regclass('pgjobs_broker_message') IS NOT NULL,
       to_regprocedure('pgjobs_broker_wake_one(text,text,boolean)') IS NOT NULL;

-- name: consumer_beat
-- Register or renew a consumer: its lease on every message it holds now runs until expires_at.
-- "inserted" is true when the row had gone (its lease lapsed and another consumer rescued it).
-- Also says when there will be something to rescue, in seconds from now (NULL: nothing): the
-- first other consumer's heartbeat expires, and the first unused x-expires queue expires.
WITH beat AS (
    INSERT INTO pgjobs_broker_consumer (id, hostname, pid, expires_at)
    VALUES (%(consumer)s, %(hostname)s, %(pid)s,
            statement_timestamp() + make_interval(secs => %(visibility_timeout)s))
    ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    RETURNING (xmax = 0) AS inserted
)
SELECT inserted,
       extract(epoch FROM (SELECT min(expires_at) FROM pgjobs_broker_consumer
                           WHERE id <> %(consumer)s) - statement_timestamp())::float8,
       extract(epoch FROM (SELECT min(q.idle_since + q.expires) FROM pgjobs_broker_queue q
                           WHERE q.expires IS NOT NULL
                             AND NOT EXISTS (SELECT 1 FROM pgjobs_broker_subscription s
                                             WHERE s.queue = q.name))
                          - statement_timestamp())::float8
FROM beat;

-- name: consumer_waits
-- The consumer is about to wait for the given queues: wake it for them again. Takes their
-- advisory locks exclusively, in key order, until commit: the publishers to them that hold
-- the lock now commit first; it then looks at the queues in a new transaction.
WITH locked AS (
    SELECT count(pg_advisory_xact_lock(1885825649, key)) AS keys
    FROM (SELECT DISTINCT hashtext(q) AS key FROM unnest(%(queues)s::text[]) AS q
          ORDER BY 1) AS wanted
)
UPDATE pgjobs_broker_consumer c
SET busy = ARRAY(SELECT b FROM unnest(c.busy) AS b WHERE b <> ALL (%(queues)s::text[]))
FROM locked
WHERE c.id = %(consumer)s AND locked.keys >= 0;

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
SELECT pgjobs_broker_wake(ARRAY(SELECT DISTINCT queue FROM released));

-- name: subscriptions_lock
-- Lock the queues that an unsubscribe may leave unused, in name order (no deadlocks), so that
-- two consumers leaving the same queue at once still see each other go.
SELECT name FROM pgjobs_broker_queue
WHERE name IN (
    SELECT queue FROM pgjobs_broker_subscription
    WHERE consumer = ANY(%(consumers)s::uuid[])
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text))
ORDER BY name
FOR UPDATE;

-- name: unsubscribe
-- The given consumers stop consuming %(queue)s (NULL: every queue). A queue left with no
-- consumer is deleted with its bindings and messages if it is auto-delete (as in AMQP: when its
-- last consumer goes), and starts its idle time if it expires (x-expires).
WITH gone AS (
    DELETE FROM pgjobs_broker_subscription
    WHERE consumer = ANY(%(consumers)s::uuid[])
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    RETURNING queue
), unused AS (
    SELECT q.name, q.auto_delete FROM pgjobs_broker_queue q
    WHERE q.name IN (SELECT queue FROM gone)
      AND NOT EXISTS (SELECT 1 FROM pgjobs_broker_subscription s
                      WHERE s.queue = q.name AND s.consumer <> ALL(%(consumers)s::uuid[]))
), idle AS (
    UPDATE pgjobs_broker_queue q SET idle_since = statement_timestamp()
    FROM unused u WHERE q.name = u.name AND NOT u.auto_delete
), dropped AS (
    DELETE FROM pgjobs_broker_queue q USING unused u WHERE q.name = u.name AND u.auto_delete
    RETURNING q.name
), unbound AS (
    DELETE FROM pgjobs_broker_binding b USING dropped d WHERE b.queue = d.name
), forgotten AS (
    UPDATE pgjobs_broker_consumer c SET busy = array_remove(c.busy, %(queue)s::text)
    WHERE %(queue)s::text IS NOT NULL AND c.id = ANY(%(consumers)s::uuid[])
      AND %(queue)s::text = ANY(c.busy)
)
DELETE FROM pgjobs_broker_message m USING dropped d WHERE m.queue = d.name;

-- name: queue_expire
-- Delete the queues declared with x-expires that have had no consumer for that long, with
-- their bindings and messages. Run with every rescue.
WITH dropped AS (
    DELETE FROM pgjobs_broker_queue q
    WHERE q.expires IS NOT NULL
      AND q.idle_since + q.expires < COALESCE(%(now)s::timestamptz, statement_timestamp())
      AND NOT EXISTS (SELECT 1 FROM pgjobs_broker_subscription s WHERE s.queue = q.name)
    RETURNING q.name
), unbound AS (
    DELETE FROM pgjobs_broker_binding b USING dropped d WHERE b.queue = d.name
)
DELETE FROM pgjobs_broker_message m USING dropped d WHERE m.queue = d.name;

-- name: consumer_delete
DELETE FROM pgjobs_broker_consumer WHERE id = ANY(%(consumers)s::uuid[]);

-- name: claim
-- Claim up to %(limit)s visible messages for one consumer in one statement, taking turns
-- between the queues in the order given: the best message of each queue, then the second
-- best of each, and so on; within a queue, priority (higher first), then publication order.
-- Each queue is read through pgjobs_broker_message_ready; SKIP LOCKED keeps concurrent
-- claimers from waiting on each other. The caller rotates the order from claim to claim.
-- "firsts" reads the queues in order (the nested loop keeps the order of "wanted": the lateral
-- cannot be flattened, and an ORDER BY would sort above it, reading every queue) and stops at
-- the %(limit)s-th that has a message, so over many queues a claim locks only the heads it
-- takes. Only if fewer queues than that had one does "more" read on in those, locking up to
-- the rest of the limit in each (the claim is then full).
-- A claim that fills its limit makes the consumer busy on %(busy)s: it comes back to them by
-- itself, and publishing to them no longer needs to wake it.
WITH wanted AS (
    SELECT queue, position
    FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS w (queue, position)
), firsts AS (
    SELECT m.id, w.queue, w.position
    FROM wanted w
    CROSS JOIN LATERAL (
        SELECT id
        FROM pgjobs_broker_message
        WHERE queue = w.queue AND consumer IS NULL AND NOT delayed
          AND visible_at <= COALESCE(%(now)s::timestamptz, statement_timestamp())
        ORDER BY priority DESC, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) m
    LIMIT %(limit)s
), more AS (
    SELECT m.id, f.position,
           1 + row_number() OVER (PARTITION BY f.position ORDER BY m.priority DESC, m.id) AS turn
    FROM firsts f
    CROSS JOIN LATERAL (
        SELECT id, priority
        FROM pgjobs_broker_message
        WHERE queue = f.queue AND consumer IS NULL AND NOT delayed AND id <> f.id
          AND visible_at <= COALESCE(%(now)s::timestamptz, statement_timestamp())
        ORDER BY priority DESC, id
        LIMIT %(limit)s - (SELECT count(*) FROM firsts)
        FOR UPDATE SKIP LOCKED
    ) m
    WHERE (SELECT count(*) FROM firsts) < %(limit)s
), picked AS (
    SELECT id, position, 1::bigint AS turn FROM firsts
    UNION ALL
    SELECT id, position, turn FROM more
    ORDER BY turn, position
    LIMIT %(limit)s
), busy AS (
    UPDATE pgjobs_broker_consumer c
    SET busy = ARRAY(SELECT DISTINCT b FROM unnest(c.busy || %(busy)s::text[]) AS b ORDER BY 1)
    WHERE c.id = %(consumer)s AND cardinality(%(busy)s::text[]) > 0
      AND NOT c.busy @> %(busy)s::text[]
      AND (SELECT count(*) FROM picked) >= %(limit)s
)
UPDATE pgjobs_broker_message m
SET consumer = %(consumer)s, deliveries = m.deliveries + 1
FROM picked
WHERE m.id = picked.id
RETURNING m.id, m.queue, m.deliveries, m.payload, picked.turn, picked.position;

-- name: publish
-- Route one message through its exchange (the default exchange '' names the queue itself),
-- insert one copy per target queue, and wake the queues whose consumers may be waiting (all
-- of them if %(always)s): for a copy visible now, or for a delayed copy, with the seconds
-- until it falls due (each copy goes to another queue). Returns the number of copies
-- inserted.
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
    RETURNING queue, delayed, visible_at
)
SELECT count(*),
       CASE WHEN count(*) = 1  -- the one queue of a direct route: the cheaper wake-up
       THEN pgjobs_broker_wake_one(min(queue), min(wake), %(always)s)
       ELSE pgjobs_broker_wake(array_agg(queue), array_agg(wake), %(always)s) END
FROM (SELECT queue,
             CASE WHEN delayed
             THEN 'eta:' || extract(epoch FROM visible_at - statement_timestamp())
             ELSE '' END AS wake
      FROM inserted) AS copies;

-- name: publish_direct
-- publish through the default exchange '', which routes to the queue the routing key names
-- (nothing is bound to it: kombu's queue_bind takes '' for amq.direct), without routing: the
-- insert and the wake-up of that one queue, with about a quarter less of the server's CPU
-- than publish takes for the same message. Returns 1, the number of copies inserted.
WITH inserted AS (
    INSERT INTO pgjobs_broker_message (queue, priority, visible_at, delayed, payload)
    VALUES (%(routing_key)s, %(priority)s,
            COALESCE(%(visible_at)s::timestamptz, statement_timestamp()),
            COALESCE(%(visible_at)s::timestamptz > statement_timestamp(), false),
            %(payload)s)
    RETURNING queue, delayed, visible_at
)
SELECT 1,
       pgjobs_broker_wake_one(
           queue,
           CASE WHEN delayed THEN 'eta:' || extract(epoch FROM visible_at - statement_timestamp())
           ELSE '' END,
           %(always)s)
FROM inserted;

-- name: publish_many
-- The bulk form of publish: route each message of the arrays (one element per message, in
-- order) as publish does, and insert one copy per target queue, ids in the order given. Wakes
-- nobody: returns the number of copies inserted, the queues given a visible copy, and the
-- queues given a delayed copy with the seconds until their first falls due, for one
-- wake_queues per call.
WITH message AS (
    SELECT *
    FROM unnest(%(exchanges)s::text[], %(routing_keys)s::text[], %(priorities)s::smallint[],
                %(visible_ats)s::timestamptz[], %(payloads)s::text[])
         WITH ORDINALITY AS m (exchange, routing_key, priority, visible_at, payload, position)
), target AS (
    SELECT m.position, m.routing_key AS queue
    FROM message m
    WHERE m.exchange = ''
    UNION
    SELECT m.position, b.queue
    FROM message m
    JOIN pgjobs_broker_binding b ON b.exchange = m.exchange
    LEFT JOIN pgjobs_broker_exchange e ON e.name = b.exchange
    WHERE m.exchange <> ''
      AND CASE COALESCE(e.type, 'direct')
          WHEN 'fanout' THEN true
          WHEN 'topic' THEN m.routing_key ~ b.pattern
          ELSE b.routing_key = m.routing_key
      END
), inserted AS (
    INSERT INTO pgjobs_broker_message (queue, priority, visible_at, delayed, payload)
    SELECT t.queue, m.priority,
           COALESCE(m.visible_at, statement_timestamp()),
           COALESCE(m.visible_at > statement_timestamp(), false),
           m.payload
    FROM target t
    JOIN message m ON m.position = t.position
    ORDER BY t.position, t.queue
    RETURNING queue, delayed, visible_at
), later AS (
    SELECT queue, min(extract(epoch FROM visible_at - statement_timestamp()))::float8 AS due_in
    FROM inserted WHERE delayed GROUP BY queue
)
SELECT
    (SELECT count(*) FROM inserted),
    ARRAY(SELECT DISTINCT queue FROM inserted WHERE NOT delayed),
    ARRAY(SELECT queue FROM later ORDER BY queue),
    ARRAY(SELECT due_in FROM later ORDER BY queue);

-- name: wake_queues
-- Wake the consumers of the given queues that may be waiting (every queue if %(always)s): one
-- notification per queue and payload.
SELECT pgjobs_broker_wake(%(queues)s::text[], %(payloads)s::text[], %(always)s);

-- name: promote
-- Delayed (ETA) messages whose time has come join their queue's ready rows; their queues
-- are woken. Run by consumers when the first delayed message falls due; SKIP LOCKED keeps them
-- apart. Returns how many, and the seconds until the next delayed message falls due (0: more
-- are due now; NULL: none is delayed).
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
    CASE WHEN (SELECT count(*) FROM due) >= %(limit)s THEN 0::float8
    ELSE extract(epoch FROM (
        SELECT min(visible_at) FROM pgjobs_broker_message
        WHERE delayed AND visible_at > COALESCE(%(now)s::timestamptz, statement_timestamp()))
        - COALESCE(%(now)s::timestamptz, statement_timestamp()))::float8
    END,
    pgjobs_broker_wake(ARRAY(SELECT DISTINCT queue FROM promoted));

-- name: ack
-- Delete the acknowledged messages that the consumer holds, or that nobody holds (given back
-- while their task still ran: done now, they must not run again). A message another consumer
-- holds is left alone: its lease lapsed and it runs there now.
DELETE FROM pgjobs_broker_message
WHERE id = ANY(%(ids)s::bigint[]) AND (consumer = %(consumer)s OR consumer IS NULL);

-- name: retake
-- A consumer whose lease lapsed takes back the messages it is still running, where nobody else
-- took them meanwhile, so that they do not run a second time elsewhere.
UPDATE pgjobs_broker_message SET consumer = %(consumer)s
WHERE id = ANY(%(ids)s::bigint[]) AND consumer IS NULL;

-- name: release
-- Return held messages to their queues at once (requeue, channel close), and wake the queues.
-- Only the holder gives a message back: one whose lease lapsed and was rescued may be running
-- on another consumer by now, and releasing it would hand it to a third.
WITH released AS (
    UPDATE pgjobs_broker_message SET consumer = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND consumer = %(consumer)s
    RETURNING queue
)
SELECT pgjobs_broker_wake(ARRAY(SELECT DISTINCT queue FROM released));

-- name: dead_letter
-- Move one message to the dead-letter table with the reason; as for ack, not one that another
-- consumer holds.
WITH moved AS (
    DELETE FROM pgjobs_broker_message
    WHERE id = %(id)s AND (consumer = %(consumer)s OR consumer IS NULL)
    RETURNING id, queue, priority, deliveries, payload, created_at
)
INSERT INTO pgjobs_broker_dead_letter (id, queue, priority, deliveries, payload, reason, created_at)
SELECT id, queue, priority, deliveries, payload, %(reason)s, created_at FROM moved
ON CONFLICT (id) DO NOTHING;

-- name: size
-- Messages waiting in a queue (held ones excluded, delayed ETA ones included), counted
-- through the two partial indexes that hold them (delayed rows are never held), so the cost
-- follows this queue's size, not the table's.
SELECT
    (SELECT count(*) FROM pgjobs_broker_message
     WHERE queue = %(queue)s AND consumer IS NULL AND NOT delayed)
  + (SELECT count(*) FROM pgjobs_broker_message WHERE queue = %(queue)s AND delayed);

-- name: purge
-- Delete the waiting messages of a queue (as counted by size); returns how many.
WITH ready_gone AS (
    DELETE FROM pgjobs_broker_message
    WHERE queue = %(queue)s AND consumer IS NULL AND NOT delayed
    RETURNING 1
), delayed_gone AS (
    DELETE FROM pgjobs_broker_message WHERE queue = %(queue)s AND delayed RETURNING 1
)
SELECT (SELECT count(*) FROM ready_gone) + (SELECT count(*) FROM delayed_gone);

-- name: queue_declare
-- Declaring a queue again counts as using it: an expiring queue's idle time starts over.
INSERT INTO pgjobs_broker_queue (name, auto_delete, expires)
VALUES (%(queue)s, %(auto_delete)s, make_interval(secs => %(expires)s))
ON CONFLICT (name) DO UPDATE SET idle_since = statement_timestamp();

-- name: queue_exists
-- A declared queue, or one that messages were routed to: each probe follows an index (held
-- messages are few: at most every consumer's prefetch window).
SELECT EXISTS (SELECT 1 FROM pgjobs_broker_queue WHERE name = %(queue)s)
    OR EXISTS (SELECT 1 FROM pgjobs_broker_message
               WHERE queue = %(queue)s AND consumer IS NULL AND NOT delayed)
    OR EXISTS (SELECT 1 FROM pgjobs_broker_message WHERE queue = %(queue)s AND delayed)
    OR EXISTS (SELECT 1 FROM pgjobs_broker_message
               WHERE queue = %(queue)s AND consumer IS NOT NULL);

-- name: subscribe
-- A consumer starts consuming a queue. The share lock waits for an unsubscribe deleting the
-- queue at this moment.
WITH locked AS (
    SELECT name FROM pgjobs_broker_queue WHERE name = %(queue)s FOR SHARE
)
INSERT INTO pgjobs_broker_subscription (queue, consumer)
VALUES (%(queue)s, %(consumer)s)
ON CONFLICT DO NOTHING;

-- name: queue_delete
WITH unbound AS (
    DELETE FROM pgjobs_broker_binding WHERE queue = %(queue)s
), ready_gone AS (
    DELETE FROM pgjobs_broker_message
    WHERE queue = %(queue)s AND consumer IS NULL AND NOT delayed
), delayed_gone AS (
    DELETE FROM pgjobs_broker_message WHERE queue = %(queue)s AND delayed
), held_gone AS (
    DELETE FROM pgjobs_broker_message WHERE queue = %(queue)s AND consumer IS NOT NULL
), unsubscribed AS (
    DELETE FROM pgjobs_broker_subscription WHERE queue = %(queue)s
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

-- name: local_statement_timeout
-- Bound the statements of the current transaction (claims): a claim never waits for long.
SELECT set_config('statement_timeout', %(timeout)s, true);

-- name: claim_settings
-- local_statement_timeout, and the claim's plan: each queue's ready index walked in claim
-- order, never read whole by a bitmap scan and sorted. Where the message table has no
-- statistics yet (a new database, before autovacuum's first analyze, or with autovacuum
-- off), the planner guesses a queue holds a few rows and picks the bitmap scan, and every
-- claim then reads the whole backlog: 130 ms instead of 0.5 ms at 100,000 queued.
SELECT set_config('statement_timeout', %(timeout)s, true),
       set_config('enable_bitmapscan', 'off', true);

-- name: probe
-- The safety net, run on the LISTEN connection (which it also proves alive): which of the
-- given queues have messages ready that no notification may have announced, and the seconds
-- until the first delayed message falls due (NULL: none is delayed).
SELECT ARRAY(SELECT q FROM unnest(%(queues)s::text[]) AS q
             WHERE EXISTS (SELECT 1 FROM pgjobs_broker_message
                           WHERE queue = q AND consumer IS NULL AND NOT delayed
                             AND visible_at <= statement_timestamp())),
       extract(epoch FROM (SELECT min(visible_at) FROM pgjobs_broker_message WHERE delayed)
                          - statement_timestamp())::float8;

-- name: begin
BEGIN;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;

-- name: autovacuum_off
-- Why the message table will not be vacuumed automatically, or NULL when it will be.
SELECT CASE
    WHEN NOT current_setting('autovacuum')::bool
        THEN 'the server runs with autovacuum = off'
    WHEN 'autovacuum_enabled=false' = ANY(COALESCE(
            (SELECT reloptions FROM pg_class WHERE oid = 'pgjobs_broker_message'::regclass),
            '{}'))
        THEN 'pgjobs_broker_message has autovacuum_enabled = false'
END;
