-- pgjobs broker schema, fourth step (Alembic migration 0010): NOTIFY only the consumers that
-- may be waiting.
--
--   pgjobs_broker_consumer.busy  the queues this consumer comes back to by itself (its last
--                                claim filled its prefetch window): publishing to them needs
--                                not wake it. Consumers of earlier releases never write it, and
--                                its default (no queue) wakes them for everything, as before.
--   pgjobs_broker_wake()         sends every wake-up notification the broker sends.
--
-- Only adds: workers of the previous release keep running while it is applied (they notify on
-- every publish, and are woken by every publish, as they always were).

ALTER TABLE pgjobs_broker_consumer ADD COLUMN busy text[] NOT NULL DEFAULT '{}';

-- Wake the consumers of queues[i] with payloads[i] (NULL: '') on the channel
-- 'pgjobs_' || md5(queue), unless every consumer of that queue is busy there; with "always",
-- wake every queue (a publish inside the caller's own transaction, which may commit much later
-- and must not hold the lock below until then). Returns the number of notifications sent.
--
-- Why: PostgreSQL makes every notifying commit wait for the one before, server-wide, so the
-- broker notifies only when a consumer may be waiting. A consumer that stops being busy on a
-- queue takes that queue's advisory lock (1885825649 = "pgjq", hashtext(queue)) exclusively,
-- removes the queue from busy, commits, and only then looks at the queue again. This function
-- takes the same lock shared (held to the end of the transaction) and then reads busy, in a
-- statement of its own, so with a snapshot taken after the lock: either that consumer's look
-- waited for this transaction's commit and finds its message, or this read finds the consumer
-- waiting. One plain statement could not do it: its snapshot is taken before it runs. Both
-- sides take the locks of several queues in key order, so they never deadlock. One query per
-- queue, with a scalar parameter, so that its plan is made once per session, not per call.
CREATE FUNCTION pgjobs_broker_wake(queues text[], payloads text[] DEFAULT NULL,
                                   always boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    key integer;
    i integer;
    sent integer := 0;
BEGIN
    IF COALESCE(cardinality(queues), 0) = 0 THEN
        RETURN 0;
    END IF;
    IF always THEN
        NULL;
    ELSIF cardinality(queues) = 1 THEN
        PERFORM pg_advisory_xact_lock_shared(1885825649, hashtext(queues[1]));
    ELSE
        FOREACH key IN ARRAY ARRAY(SELECT DISTINCT hashtext(q) FROM unnest(queues) AS q
                                   ORDER BY 1) LOOP
            PERFORM pg_advisory_xact_lock_shared(1885825649, key);
        END LOOP;
    END IF;
    FOR i IN 1 .. cardinality(queues) LOOP
        IF always OR EXISTS (
                SELECT 1
                FROM pgjobs_broker_subscription s
                JOIN pgjobs_broker_consumer c ON c.id = s.consumer
                WHERE s.queue = queues[i] AND queues[i] <> ALL (c.busy)) THEN
            PERFORM pg_notify('pgjobs_' || md5(queues[i]), COALESCE(payloads[i], ''));
            sent := sent + 1;
        END IF;
    END LOOP;
    RETURN sent;
END
$$;
