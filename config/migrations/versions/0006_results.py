"""Results: the counters that join chords natively.

``pgjobs_chord`` holds one row per chord (its header's group id): how many parts it waits
for, how many have finished, and when its callback was sent. ``pgjobs_chord_part`` holds
each finished part's state and result until the callback is sent; its primary key is what
makes a part that runs twice count once. Task results stay in Celery's ``celery_taskmeta``.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Every part inserts and deletes a row: vacuum these small tables early.
_AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 200, "
    "autovacuum_analyze_scale_factor = 0.05"
)


def upgrade() -> None:
    op.create_table(
        "pgjobs_chord",
        sa.Column("group_id", sa.String(155), primary_key=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("extra", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_pgjobs_chord_created_at", "pgjobs_chord", ["created_at"])
    op.create_table(
        "pgjobs_chord_part",
        sa.Column(
            "group_id", sa.String(155),
            sa.ForeignKey("pgjobs_chord.group_id", ondelete="CASCADE"), nullable=False,
        ),
        sa.Column("part_key", sa.Text(), nullable=False),
        sa.Column("group_index", sa.Integer(), nullable=True),
        sa.Column("arrival", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("state", sa.String(50), nullable=False),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("group_id", "part_key"),
    )
    for table in ("pgjobs_chord", "pgjobs_chord_part"):
        op.execute(f"ALTER TABLE {table} SET ({_AUTOVACUUM})")


def downgrade() -> None:
    op.drop_table("pgjobs_chord_part")
    op.drop_table("pgjobs_chord")
