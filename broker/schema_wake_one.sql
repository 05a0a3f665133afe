-- pgjobs broker schema, fifth step (Alembic migration 0011): a publish to one queue wakes it
-- at about half the cost of pgjobs_broker_wake() on the server.
--
--   pgjobs_broker_wake_one()  the wake-up of one queue, which pgjobs_broker_wake() now runs
--                             for each of its queues.
--
-- Only adds: pgjobs_broker_wake() keeps its signature and what it does, so workers of the
-- previous release keep running while it is applied, and after it.

-- Wake the consumers of "queue" with "payload" on the channel 'pgjobs_' || md5(queue), unless
-- every consumer of that queue is busy there; with "always", wake it anyway. Returns the number
-- of notifications sent (0 or 1). Takes the queue's advisory lock shared first (see
-- pgjobs_broker_wake() in schema_wakeups.sql for why): a caller that holds it already, in key
-- order among others, takes nothing new.
CREATE FUNCTION pgjobs_broker_wake_one(queue text, payload text DEFAULT '',
                                       always boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT always THEN
        PERFORM pg_advisory_xact_lock_shared(1885825649, hashtext(queue));
        IF NOT EXISTS (
                SELECT 1
                FROM pgjobs_broker_subscription s
                JOIN pgjobs_broker_consumer c ON c.id = s.consumer
                WHERE s.queue = pgjobs_broker_wake_one.queue
                  AND pgjobs_broker_wake_one.queue <> ALL (c.busy)) THEN
            RETURN 0;
        END IF;
    END IF;
    PERFORM pg_notify('pgjobs_' || md5(queue), COALESCE(payload, ''));
    RETURN 1;
END
$$;

-- pgjobs_broker_wake() as in schema_wakeups.sql, the check of each queue now made by
-- pgjobs_broker_wake_one() once the locks are held in key order.
CREATE OR REPLACE FUNCTION pgjobs_broker_wake(queues text[], payloads text[] DEFAULT NULL,
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
    IF NOT always THEN
        FOREACH key IN ARRAY ARRAY(SELECT DISTINCT hashtext(q) FROM unnest(queues) AS q
                                   ORDER BY 1) LOOP
            PERFORM pg_advisory_xact_lock_shared(1885825649, key);
        END LOOP;
    END IF;
    FOR i IN 1 .. cardinality(queues) LOOP
        sent := sent + pgjobs_broker_wake_one(queues[i], payloads[i], always);
    END LOOP;
    RETURN sent;
END
$$;
