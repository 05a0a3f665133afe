"""The Procfile's processes with DATABASE_URL on a PgBouncer in transaction mode, and
DATABASE_DIRECT_URL on PostgreSQL itself for what needs a session (LISTEN, beat's lock,
migrations)."""

from __future__ import annotations

import psycopg
import pytest

from tests.acceptance.deploy_scenario import run_deployment
from tests.broker import pgbouncer
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

POOL_SIZE = 2


def _client_backends(direct_url: str) -> list[str]:
    with psycopg.connect(direct_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()").fetchall()
    return sorted(name for (name,) in rows)


def test_worker_beat_and_producer_run_through_pgbouncer(procfile_env, smtp_inbox, app_db):
    inbox, _ = smtp_inbox
    with pgbouncer.pgbouncer(app_db, pool_size=POOL_SIZE) as bouncer_url:
        procfile_env.env.update(DATABASE_URL=bouncer_url, DATABASE_DIRECT_URL=app_db)
        # a producer's result and every email of a worker and a beat, through PgBouncer
        run_deployment(procfile_env, inbox)

        # and PostgreSQL saw only PgBouncer's pool and the two sessions that need their own
        names = _client_backends(app_db)
        assert "pgjobs-broker-listen" in names
        assert any(name.startswith("pgjobs-beat:") for name in names)
        assert len(names) <= POOL_SIZE + 2, names


def test_beat_behind_pgbouncer_without_a_direct_url_says_what_to_set(procfile_env, app_db):
    with pgbouncer.pgbouncer(app_db, pool_size=POOL_SIZE) as bouncer_url:
        procfile_env.env.update(DATABASE_URL=bouncer_url)
        log = procfile_env.start("beat")
        line = wait_until(lambda: next((text for text in log.read_text().splitlines()
                                        if "cannot reach the database" in text), None),
                          60, "beat to say why it cannot lead", log.read_text)
        assert "point DATABASE_DIRECT_URL (Celery's beat_lock_dburi) past the pooler" in line
