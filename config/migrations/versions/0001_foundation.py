"""Foundation: Celery results, the sqlalchemy-celery-beat schedule, the sent-email log.

The first two sets of tables mirror the models of Celery's database result
backend and of sqlalchemy-celery-beat, so that neither library has to create
tables at run time.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _schedule_tables()
    _result_tables()
    _sent_email_table()


def _sent_email_table() -> None:
    # One row per email actually handed to SMTP, keyed by the Celery task id, so a
    # redelivered task can tell that its email already went out.
    op.create_table(
        "pgjobs_sent_email",
        sa.Column("task_id", sa.String(155), primary_key=True),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column(
            "sent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_pgjobs_sent_email_sent_at", "pgjobs_sent_email", ["sent_at"])


def _schedule_tables() -> None:
    op.create_table(
        "celery_clockedschedule",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("clocked_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "celery_crontabschedule",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "minute",
            sa.String(length=240),
            nullable=False,
        ),
        sa.Column(
            "hour",
            sa.String(length=96),
            nullable=False,
        ),
        sa.Column(
            "day_of_week",
            sa.String(length=64),
            nullable=False,
        ),
        sa.Column(
            "day_of_month",
            sa.String(length=124),
            nullable=False,
        ),
        sa.Column(
            "month_of_year",
            sa.String(length=64),
            nullable=False,
        ),
        sa.Column(
            "timezone",
            sa.String(length=64),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "celery_intervalschedule",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "every",
            sa.Integer(),
            nullable=False,
        ),
        sa.Column(
            "period",
            sa.Enum("days", "hours", "minutes", "seconds", "microseconds", name="period"),
            nullable=False,
        ),
        sa.CheckConstraint("every >= 1"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "celery_periodictask",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "name", sa.String(length=255), nullable=False, comment="Short Description For This Task"
        ),
        sa.Column(
            "task",
            sa.String(length=255),
            nullable=False,
        ),
        sa.Column(
            "args",
            sa.Text(),
            nullable=False,
        ),
        sa.Column(
            "kwargs",
            sa.Text(),
            nullable=False,
        ),
        sa.Column(
            "queue",
            sa.String(length=255),
            nullable=True,
        ),
        sa.Column(
            "exchange",
            sa.String(length=255),
            nullable=True,
        ),
        sa.Column(
            "routing_key",
            sa.String(length=255),
            nullable=True,
        ),
        sa.Column(
            "headers",
            sa.Text(),
            nullable=True,
        ),
        sa.Column(
            "priority",
            sa.Integer(),
            nullable=True,
        ),
        sa.Column(
            "expires",
            sa.DateTime(timezone=True),
            nullable=True,
        ),
        sa.Column(
            "expire_seconds",
            sa.Integer(),
            nullable=True,
        ),
        sa.Column(
            "one_off",
            sa.Boolean(),
            nullable=False,
        ),
        sa.Column(
            "start_time",
            sa.DateTime(timezone=True),
            nullable=True,
        ),
        sa.Column(
            "enabled", sa.Boolean(), nullable=False, comment="Set to False to disable the schedule"
        ),
        sa.Column(
            "last_run_at",
            sa.DateTime(timezone=True),
            nullable=True,
        ),
        sa.Column(
            "total_run_count",
            sa.Integer(),
            nullable=False,
        ),
        sa.Column(
            "date_changed",
            sa.DateTime(timezone=True),
            nullable=True,
        ),
        sa.Column(
            "description",
            sa.Text(),
            nullable=True,
        ),
        sa.Column(
            "discriminator",
            sa.String(length=20),
            nullable=False,
        ),
        sa.Column(
            "schedule_id", sa.Integer(), nullable=False, comment="ID of the schedule model object. "
        ),
        sa.CheckConstraint("priority BETWEEN 0 AND 255"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "celery_periodictaskchanged",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_update", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "celery_solarschedule",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "event",
            sa.Enum(
                "dawn_astronomical",
                "dawn_nautical",
                "dawn_civil",
                "sunrise",
                "solar_noon",
                "sunset",
                "dusk_civil",
                "dusk_nautical",
                "dusk_astronomical",
                name="solarevent",
            ),
            nullable=False,
        ),
        sa.Column(
            "latitude",
            sa.Numeric(precision=9, scale=6, decimal_return_scale=6, asdecimal=False),
            nullable=False,
        ),
        sa.Column(
            "longitude",
            sa.Numeric(precision=9, scale=6, decimal_return_scale=6, asdecimal=False),
            nullable=False,
        ),
        sa.CheckConstraint("latitude BETWEEN -90 AND 90"),
        sa.CheckConstraint("longitude BETWEEN -180 AND 180"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event", "latitude", "longitude"),
    )


def _result_tables() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("task_id_sequence")))
    op.create_table(
        "celery_taskmeta",
        sa.Column(
            "id",
            sa.Integer(),
            server_default=sa.text("nextval('task_id_sequence')"),
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=155), nullable=True),
        sa.Column("status", sa.String(length=50), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("date_done", sa.DateTime(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("children", sa.LargeBinary(), nullable=True),
        sa.Column("name", sa.String(length=155), nullable=True),
        sa.Column("args", sa.LargeBinary(), nullable=True),
        sa.Column("kwargs", sa.LargeBinary(), nullable=True),
        sa.Column("worker", sa.String(length=155), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=True),
        sa.Column("queue", sa.String(length=155), nullable=True),
        sa.Column("stamps", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id"),
    )
    op.create_index(
        op.f("ix_celery_taskmeta_date_done"), "celery_taskmeta", ["date_done"], unique=False
    )
    op.execute(sa.schema.CreateSequence(sa.Sequence("taskset_id_sequence")))
    op.create_table(
        "celery_tasksetmeta",
        sa.Column(
            "id",
            sa.Integer(),
            server_default=sa.text("nextval('taskset_id_sequence')"),
            nullable=False,
        ),
        sa.Column("taskset_id", sa.String(length=155), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("date_done", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("taskset_id"),
    )
    op.create_index(
        op.f("ix_celery_tasksetmeta_date_done"), "celery_tasksetmeta", ["date_done"], unique=False
    )


def downgrade() -> None:
    for table in (
        "pgjobs_sent_email",
        "celery_tasksetmeta",
        "celery_taskmeta",
        "celery_periodictask",
        "celery_periodictaskchanged",
        "celery_solarschedule",
        "celery_intervalschedule",
        "celery_crontabschedule",
        "celery_clockedschedule",
    ):
        op.drop_table(table)
    for name in ("task_id_sequence", "taskset_id_sequence"):
        op.execute(sa.schema.DropSequence(sa.Sequence(name)))
    for name in ("period", "solarevent"):
        sa.Enum(name=name).drop(op.get_bind())
