"""Beat: the record of fired ticks and each entry's missed-run policy.

``pgjobs_beat_tick`` holds one row per (entry, due time) that a leader claimed; its
primary key is what makes a tick fire at most once across leader changes.
``pgjobs_beat_policy`` holds the ``catch_up`` policy of an entry (``once`` when absent)
and goes away with the entry.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pgjobs_beat_tick",
        sa.Column("entry_name", sa.String(255), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_id", sa.String(155), nullable=False),
        sa.Column("leader", sa.Text(), nullable=False),
        sa.Column(
            "claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        # NULL while the message is being published outside the claiming transaction.
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("entry_name", "due_at"),
    )
    op.create_index("ix_pgjobs_beat_tick_claimed_at", "pgjobs_beat_tick", ["claimed_at"])
    op.create_table(
        "pgjobs_beat_policy",
        sa.Column(
            "periodic_task_id",
            sa.Integer(),
            sa.ForeignKey("celery_periodictask.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("catch_up", sa.String(8), nullable=False, server_default="once"),
        sa.CheckConstraint("catch_up IN ('once', 'skip')", name="ck_pgjobs_beat_policy_catch_up"),
    )


def downgrade() -> None:
    op.drop_table("pgjobs_beat_policy")
    op.drop_table("pgjobs_beat_tick")
