-- pgjobs broker schema, applied by Alembic migration 0002.
--
-- Tables:
--   pgjobs_broker_consumer     one row per live consumer connection; its heartbeat is the lease
--                              of every message it holds (expires_at = last beat + timeout)
--   pgjobs_broker_message      queued and held messages; ack deletes the row
--   pgjobs_broker_queue        declared queues; auto-delete queues record the consumer owning them
--   pgjobs_broker_exchange     declared exchanges and their type
--   pgjobs_broker_binding      queue bindings, shared by every process and host
--   pgjobs_broker_dead_letter  rejected (requeue=False) and malformed messages, with the reason

CREATE TABLE pgjobs_broker_consumer (
    id uuid PRIMARY KEY,
    hostname text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX pgjobs_broker_consumer_expires ON pgjobs_broker_consumer (expires_at);

CREATE TABLE pgjobs_broker_message (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    -- Higher runs first (0..255), as in AMQP.
    priority smallint NOT NULL DEFAULT 0,
    -- Not handed out before this time: publish time, or a Celery ETA minus the look-ahead.
    visible_at timestamptz NOT NULL DEFAULT now(),
    -- True while visible_at lies ahead (a Celery ETA): such rows stay out of the claim index
    -- until a consumer's periodic promotion finds them due, so a million scheduled messages
    -- never slow down claiming the ready ones.
    delayed boolean NOT NULL DEFAULT false,
    -- The consumer holding the message; NULL while it waits in its queue.
    consumer uuid REFERENCES pgjobs_broker_consumer (id) ON DELETE SET NULL,
    deliveries integer NOT NULL DEFAULT 0,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Matches the claim exactly: one queue, ready rows, ORDER BY priority DESC, id.
CREATE INDEX pgjobs_broker_message_ready ON pgjobs_broker_message (queue, priority DESC, id)
    INCLUDE (visible_at) WHERE consumer IS NULL AND NOT delayed;
CREATE INDEX pgjobs_broker_message_delayed ON pgjobs_broker_message (visible_at)
    WHERE delayed;
CREATE INDEX pgjobs_broker_message_held ON pgjobs_broker_message (consumer)
    WHERE consumer IS NOT NULL;

CREATE TABLE pgjobs_broker_queue (
    name text PRIMARY KEY,
    auto_delete boolean NOT NULL DEFAULT false,
    -- Set when a consumer consumes an auto-delete queue: the queue goes when that consumer goes.
    owner uuid
);
CREATE INDEX pgjobs_broker_queue_owner ON pgjobs_broker_queue (owner) WHERE owner IS NOT NULL;

CREATE TABLE pgjobs_broker_exchange (
    name text PRIMARY KEY,
    type text NOT NULL CHECK (type IN ('direct', 'topic', 'fanout'))
);

CREATE TABLE pgjobs_broker_binding (
    exchange text NOT NULL,
    routing_key text NOT NULL,
    queue text NOT NULL,
    -- Topic bindings: the routing key as a regular expression (kombu's translation).
    pattern text NOT NULL DEFAULT '',
    PRIMARY KEY (exchange, routing_key, queue)
);
CREATE INDEX pgjobs_broker_binding_queue ON pgjobs_broker_binding (queue);

CREATE TABLE pgjobs_broker_dead_letter (
    id bigint PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL,
    deliveries integer NOT NULL,
    payload text NOT NULL,
    reason text NOT NULL,
    created_at timestamptz NOT NULL,
    died_at timestamptz NOT NULL DEFAULT now()
);
