"""Broker: queues with many consumers, AMQP auto-delete and x-expires.

The DDL lives with the broker library in ``broker/schema_subscriptions.sql``. It only adds:
workers of the previous release keep running while it is applied.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from broker import schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for statement in schema.statements("schema_subscriptions.sql"):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    op.drop_index("pgjobs_broker_queue_expiring", table_name="pgjobs_broker_queue")
    op.drop_column("pgjobs_broker_queue", "idle_since")
    op.drop_column("pgjobs_broker_queue", "expires")
    op.drop_table("pgjobs_broker_subscription")
