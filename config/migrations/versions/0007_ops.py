"""Operations: indexes that keep ``pgjobs status`` cheap, and durable revokes.

- ``pgjobs_broker_message_delayed_queue``: ETA messages per queue, read index-only by the
  status counts and by ``inspect scheduled`` (the existing delayed index has no queue).
- ``pgjobs_broker_dead_letter_queue`` and ``_died``: dead letters per queue, and their
  retention (``DEAD_LETTER_RETENTION_DAYS``).
- ``pgjobs_revoked_task``: every revoked task id, so that a worker started later, or after
  every worker restarted, never runs it (Celery keeps revokes in worker memory only).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("pgjobs_broker_message_delayed_queue", "pgjobs_broker_message",
                    ["queue", "visible_at"], postgresql_where=sa.text("delayed"))
    op.create_index("pgjobs_broker_dead_letter_queue", "pgjobs_broker_dead_letter",
                    ["queue", "id"])
    op.create_index("pgjobs_broker_dead_letter_died", "pgjobs_broker_dead_letter", ["died_at"])
    op.create_table(
        "pgjobs_revoked_task",
        sa.Column("task_id", sa.Text(), primary_key=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
    op.create_index("pgjobs_revoked_task_revoked_at", "pgjobs_revoked_task", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("pgjobs_revoked_task")
    op.drop_index("pgjobs_broker_dead_letter_died", "pgjobs_broker_dead_letter")
    op.drop_index("pgjobs_broker_dead_letter_queue", "pgjobs_broker_dead_letter")
    op.drop_index("pgjobs_broker_message_delayed_queue", "pgjobs_broker_message")
