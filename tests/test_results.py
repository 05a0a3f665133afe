"""Task results live in PostgreSQL, through Celery's database backend."""

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql


def test_date_done_is_utc_whatever_the_database_time_zone(app_db):
    from config.celery import app

    # given a database whose sessions default to UTC+14
    with psycopg.connect(app_db, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'Pacific/Kiritimati'").format(
            sql.Identifier(name)))

    # when a result is stored
    app.backend.store_result("utc-check", 42, "SUCCESS")

    # then its date_done is the UTC time the clean-up compares against
    with psycopg.connect(app_db) as conn:
        (done,) = conn.execute(
            "SELECT date_done FROM celery_taskmeta WHERE task_id = 'utc-check'").fetchone()
    assert abs(done - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=5)
