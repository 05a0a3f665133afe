"""Broker: wake only the consumers that may be waiting.

Adds ``pgjobs_broker_consumer.busy`` and the function ``pgjobs_broker_wake``; the DDL lives
with the broker library in ``broker/schema_wakeups.sql``. It only adds: workers of the
previous release keep running while it is applied, and after it (they notify on every
publish, and are woken by every publish, as before).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

from broker import schema

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for statement in schema.statements("schema_wakeups.sql"):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    op.execute("DROP FUNCTION pgjobs_broker_wake(text[], text[], boolean)")
    op.drop_column("pgjobs_broker_consumer", "busy")
