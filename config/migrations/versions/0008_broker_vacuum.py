"""Broker: per-table autovacuum settings fit for queue tables.

The settings live with the broker library in ``broker/schema_vacuum.sql``.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

from broker import schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

def upgrade() -> None:
    bind = op.get_bind()
    for statement in schema.statements("schema_vacuum.sql"):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    op.execute("ALTER TABLE pgjobs_broker_message RESET (autovacuum_vacuum_scale_factor, "
               "autovacuum_vacuum_threshold, autovacuum_vacuum_insert_scale_factor, "
               "autovacuum_vacuum_insert_threshold, autovacuum_analyze_scale_factor, "
               "autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay)")
    op.execute("ALTER TABLE pgjobs_broker_consumer RESET (autovacuum_vacuum_scale_factor, "
               "autovacuum_vacuum_threshold, autovacuum_vacuum_cost_delay)")
    op.execute("ALTER TABLE pgjobs_broker_subscription RESET (autovacuum_vacuum_scale_factor, "
               "autovacuum_vacuum_threshold, autovacuum_vacuum_cost_delay)")
