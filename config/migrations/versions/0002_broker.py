"""Broker: messages, leases, consumers, bindings and dead letters.

The DDL lives with the broker library in ``broker/schema.sql``.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from broker import schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for statement in schema.statements():
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    for table in schema.TABLES:
        op.drop_table(table)
