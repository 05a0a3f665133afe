"""Beat: the leader's lease.

``pgjobs_beat_leader`` holds at most one row: which beat leads, the backend pid of the
connection holding its advisory lock, and until when its lease runs. The leader renews it
every few seconds; a standby that finds it expired ends that backend's session (which frees
the lock) and takes over. See :mod:`beat` for the protocol.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pgjobs_beat_leader",
        # One row at most: one pgjobs database has one beat leader.
        sa.Column("id", sa.SmallInteger(), primary_key=True, server_default="1"),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("elected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_pgjobs_beat_leader_one_row"),
    )


def downgrade() -> None:
    op.drop_table("pgjobs_beat_leader")
