"""Broker: a cheaper wake-up for a publish to one queue.

Adds the function ``pgjobs_broker_wake_one`` and makes ``pgjobs_broker_wake`` run it for each
of its queues; the DDL lives with the broker library in ``broker/schema_wake_one.sql``. It only
adds: ``pgjobs_broker_wake`` keeps its signature and behaviour, so workers of the previous
release keep running while it is applied, and after it.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

from broker import schema

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WAKE = "CREATE FUNCTION pgjobs_broker_wake("


def upgrade() -> None:
    bind = op.get_bind()
    for statement in schema.statements("schema_wake_one.sql"):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    # pgjobs_broker_wake as migration 0010 made it, before wake_one can go.
    [wake] = [s for s in schema.statements("schema_wakeups.sql") if s.startswith(WAKE)]
    op.get_bind().exec_driver_sql(wake.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute("DROP FUNCTION pgjobs_broker_wake_one(text, text, boolean)")
