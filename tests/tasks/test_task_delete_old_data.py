"""tasks.delete_old_data against a real PostgreSQL whose session time zone is far from UTC."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.exc import OperationalError
from task_helpers import free_port, recorded_retries

from tasks import delete_old_data
from tasks.cleanup import MAX_RETRIES
from tasks.db import engine
from tasks.errors import RetentionConfigError
from tasks.retention import Rule, _delete_batch, cutoff_for, database_now, resolve

# UTC+14: comparing a naive-UTC column with an instant in the session zone would be
# 14 hours off, enough to delete the "fresh" rows (23 h old) or keep the old (25 h).
FAR_ZONE = "Pacific/Kiritimati"
RULES = [
    {"table": "user_sessions", "column": "created_at", "max_age_days": 1},
    {"table": "daily_reports", "column": "day", "max_age_days": 2},
]
SEED = """
CREATE TABLE user_sessions (id serial PRIMARY KEY, created_at timestamptz NOT NULL, note text);
CREATE TABLE daily_reports (day date NOT NULL);
INSERT INTO user_sessions (created_at, note)
  SELECT now() - interval '25 hours', 'old' FROM generate_series(1, 5)
  UNION ALL SELECT now() - interval '23 hours', 'new' FROM generate_series(1, 2);
INSERT INTO daily_reports (day) VALUES
  ((now() AT TIME ZONE 'UTC')::date - 5), ((now() AT TIME ZONE 'UTC')::date);
INSERT INTO celery_taskmeta (task_id, status, date_done)
  SELECT 'old-' || n, 'SUCCESS', (now() AT TIME ZONE 'UTC') - interval '25 hours'
  FROM generate_series(1, 5) AS n
  UNION ALL SELECT 'new-' || n, 'SUCCESS', (now() AT TIME ZONE 'UTC') - interval '23 hours'
  FROM generate_series(1, 2) AS n;
INSERT INTO celery_tasksetmeta (taskset_id, date_done)
  VALUES ('old-group', (now() AT TIME ZONE 'UTC') - interval '25 hours');
INSERT INTO pgjobs_chord (group_id, size, created_at) VALUES
  ('old-chord', 2, now() - interval '25 hours'), ('new-chord', 2, now() - interval '23 hours');
INSERT INTO pgjobs_chord_part (group_id, part_key, state) VALUES ('old-chord', 'a:0', 'SUCCESS');
INSERT INTO pgjobs_sent_email (task_id, recipient, subject, sent_at)
  SELECT 'old-' || n, 'a@example.com', 's', now() - interval '25 hours'
  FROM generate_series(1, 3) AS n
  UNION ALL SELECT 'new-1', 'a@example.com', 's', now() - interval '23 hours';
INSERT INTO pgjobs_broker_dead_letter
  (id, queue, priority, deliveries, payload, reason, created_at, died_at)
  SELECT n, 'q', 0, 1, '{}', 'test', now() - interval '30 hours',
         now() - CASE WHEN n <= 4 THEN interval '25 hours' ELSE interval '23 hours' END
  FROM generate_series(1, 6) AS n;
INSERT INTO pgjobs_revoked_task (task_id, revoked_at)
  VALUES ('old-revoke', now() - interval '25 hours'), ('new-revoke', now() - interval '23 hours');
"""

EXPIRED = {"celery_taskmeta": 5, "celery_tasksetmeta": 1, "pgjobs_chord": 1,
           "pgjobs_sent_email": 3, "pgjobs_broker_dead_letter": 4, "pgjobs_revoked_task": 1,
           "user_sessions": 5, "daily_reports": 1}
TOTALS = {"celery_taskmeta": 7, "celery_tasksetmeta": 1, "pgjobs_chord": 2,
          "pgjobs_sent_email": 4, "pgjobs_broker_dead_letter": 6, "pgjobs_revoked_task": 2,
          "user_sessions": 7, "daily_reports": 2}


def row_counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return {table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(table))).fetchone()[0] for table in TOTALS}


@pytest.fixture
def seeded(app_db: str, settings_env) -> str:
    """Old and fresh rows in every table a rule covers; retention 1 day, batches of 2 rows."""
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO {}").format(
            sql.Identifier(conn.info.dbname), sql.Literal(FAR_ZONE)))
    with psycopg.connect(app_db) as conn:
        conn.execute(SEED)
    settings_env(RESULT_RETENTION_DAYS="1", SENT_EMAIL_RETENTION_DAYS="1",
                 DEAD_LETTER_RETENTION_DAYS="1", REVOKE_RETENTION_DAYS="1",
                 RETENTION_BATCH_SIZE="2", RETENTION_TABLES=json.dumps(RULES))
    assert row_counts(app_db) == TOTALS
    return app_db


def test_old_rows_are_deleted_and_fresh_rows_kept(seeded):
    # When the retention job runs
    result = delete_old_data.apply()

    # Then it reports the rows it deleted per table, and only the fresh rows remain
    assert result.successful(), result.traceback
    assert result.result == EXPIRED
    json.dumps(result.result)  # storable as a JSON result
    remaining = {table: TOTALS[table] - EXPIRED[table] for table in TOTALS}
    assert row_counts(seeded) == remaining
    with psycopg.connect(seeded) as conn:
        kept = conn.execute("SELECT task_id FROM celery_taskmeta ORDER BY task_id").fetchall()
        notes = conn.execute("SELECT DISTINCT note FROM user_sessions").fetchall()
    assert kept == [("new-1",), ("new-2",)] and notes == [("new",)]


def test_dry_run_counts_but_deletes_nothing(seeded):
    # When the job runs as a dry run
    result = delete_old_data.apply(kwargs={"dry_run": True})

    # Then it reports what would go, and every row is still there
    assert result.successful(), result.traceback
    assert result.result == EXPIRED
    assert row_counts(seeded) == TOTALS


def test_one_batch_deletes_at_most_the_batch_size(seeded):
    # Given the user-table rule, checked against the catalogue
    with engine().connect() as connection:
        [target] = resolve(connection, [Rule("user_sessions", "created_at", 1)])
        cutoff = cutoff_for(target, database_now(connection))

    # When one batch of 2 runs, Then exactly 2 of the 5 expired rows are gone
    assert _delete_batch(engine(), target, cutoff, 2) == 2
    assert row_counts(seeded)["user_sessions"] == TOTALS["user_sessions"] - 2


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ({"table": "no_such_table", "column": "created_at"}, "'no_such_table'"),
        ({"table": "user_sessions; DROP TABLE daily_reports", "column": "x"}, "DROP TABLE"),
        ({"table": "user_sessions", "column": "expires_on"}, "'expires_on'"),
        ({"table": "user_sessions", "column": "id"}, "user_sessions.id of type int4"),
        ({"table": "user_sessions", "column": "note"}, "user_sessions.note of type text"),
    ],
    ids=["unknown-table", "hostile-name", "unknown-column", "integer-column", "text-column"],
)
def test_bad_rule_fails_clearly_and_deletes_nothing(seeded, settings_env, rule, named):
    # Given RETENTION_TABLES with one bad rule after a good one
    settings_env(RETENTION_TABLES=json.dumps([RULES[0], {**rule, "max_age_days": 1}]))

    # When the job runs
    with recorded_retries() as retries:
        result = delete_old_data.apply()

    # Then it fails at once with one line naming the rule and RETENTION_TABLES
    assert result.state == "FAILURE" and isinstance(result.result, RetentionConfigError)
    message = str(result.result)
    assert named in message and "RETENTION_TABLES" in message and "\n" not in message
    assert retries == []
    # And nothing was deleted, not even from the tables of the good rules
    assert row_counts(seeded) == TOTALS


def test_unreachable_database_is_retried_three_times(app_db, settings_env):
    # Given DATABASE_URL points at a port where nothing listens
    settings_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/pgjobs")

    # When the job runs (eagerly: each retry runs at once)
    with recorded_retries() as retries:
        result = delete_old_data.apply()

    # Then it asked for exactly three retries, then failed with the connection error
    assert MAX_RETRIES == 3 and len(retries) == 3
    assert result.state == "FAILURE" and isinstance(result.result, OperationalError)


def test_dry_run_must_be_a_boolean(app_db):
    result = delete_old_data.apply(kwargs={"dry_run": "yes"})
    assert result.state == "FAILURE" and "dry_run must be true or false" in str(result.result)


def test_missing_pgjobs_table_points_at_migrate_and_deletes_nothing(seeded):
    # Given a database where a pgjobs table is missing
    with psycopg.connect(seeded) as conn:
        conn.execute("DROP TABLE pgjobs_sent_email")

    # When the job runs
    result = delete_old_data.apply()

    # Then it names the table and the fix, and the other tables keep their old rows
    assert isinstance(result.result, RetentionConfigError)
    assert "'pgjobs_sent_email'" in str(result.result) and "pgjobs migrate" in str(result.result)
    with psycopg.connect(seeded) as conn:
        assert conn.execute("SELECT count(*) FROM celery_taskmeta").fetchone()[0] == 7


def test_a_table_with_inheriting_children_loses_only_its_expired_rows(app_db, settings_env):
    # Given a rule on a parent table whose two children each hold one row at the same ctid:
    # an expired one in the first, a fresh one in the second (ctids are per table)
    with psycopg.connect(app_db) as conn:
        conn.execute("""
            CREATE TABLE audit_log (logged_at timestamptz NOT NULL, note text);
            CREATE TABLE audit_log_a () INHERITS (audit_log);
            CREATE TABLE audit_log_b () INHERITS (audit_log);
            INSERT INTO audit_log_a VALUES (now() - interval '10 days', 'old');
            INSERT INTO audit_log_b VALUES (now(), 'new');
        """)
    settings_env(RETENTION_TABLES=json.dumps(
        [{"table": "audit_log", "column": "logged_at", "max_age_days": 1}]))

    # When the retention job runs
    result = delete_old_data.apply()

    # Then the expired row is gone and the fresh one, in the other child, is kept
    assert result.successful(), result.traceback
    assert result.result["audit_log"] == 1
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT note FROM audit_log").fetchall() == [("new",)]
