"""Sent-email log: a lease per row, so that no transaction stays open across SMTP.

``lease_until`` is set while a delivery is sending (``lease_holder`` may send until then)
and NULL once the email was sent; ``lease_holder`` names the delivery that holds, or held,
the lease. Both are nullable with no default: adding them only changes the catalogue, and
every existing row, like every row a worker of the previous release still writes while
this runs, reads as sent, which is what those rows mean.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pgjobs_sent_email", sa.Column("lease_holder", sa.Text(), nullable=True))
    op.add_column("pgjobs_sent_email",
                  sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("pgjobs_sent_email", "lease_until")
    op.drop_column("pgjobs_sent_email", "lease_holder")
