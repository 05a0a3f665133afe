-- pgjobs broker schema, third step (Alembic migration 0008): autovacuum fit for queue tables.
--
-- Every claim and every ack leaves a dead row, and every heartbeat a dead consumer row. With
-- the server's defaults (vacuum once a fifth of the table is dead, throttled) a big backlog
-- drains over tens of thousands of dead rows that each claim walks past. These tables are
-- vacuumed after a fixed number of dead rows, whatever their size, and without throttling.

ALTER TABLE pgjobs_broker_message SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE pgjobs_broker_consumer SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE pgjobs_broker_subscription SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
