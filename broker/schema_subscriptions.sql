-- pgjobs broker schema, second step (Alembic migration 0004): queues consumed by many
-- consumers, with AMQP's auto-delete and x-expires semantics.
--
--   pgjobs_broker_subscription  one row per (queue, consumer) consuming it; an auto-delete queue
--                               goes when its last row goes, an expiring one starts its idle time
--   pgjobs_broker_queue.expires     x-expires: how long the queue may stay unused before it goes
--   pgjobs_broker_queue.idle_since  when it was last declared or lost its last consumer
--
-- pgjobs_broker_queue.owner is no longer written, and kept so that workers of the previous
-- release keep running while this migration is applied.

CREATE TABLE pgjobs_broker_subscription (
    queue text NOT NULL,
    consumer uuid NOT NULL REFERENCES pgjobs_broker_consumer (id) ON DELETE CASCADE,
    PRIMARY KEY (queue, consumer)
);
CREATE INDEX pgjobs_broker_subscription_consumer ON pgjobs_broker_subscription (consumer);

ALTER TABLE pgjobs_broker_queue ADD COLUMN expires interval;
ALTER TABLE pgjobs_broker_queue ADD COLUMN idle_since timestamptz NOT NULL DEFAULT now();
CREATE INDEX pgjobs_broker_queue_expiring ON pgjobs_broker_queue (idle_since)
    WHERE expires IS NOT NULL;
