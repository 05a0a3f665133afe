"""The Procfile's processes with DATABASE_URL on a PgBouncer in transaction mode, and
DATABASE_DIRECT_URL on PostgreSQL itself for what needs a session (LISTEN, beat's lock,
migrations)."""

from __future__ import annotations

import psycopg
import pytest

from tests.acceptance.deploy_scenario import run_deployment
from tests.broker import pgbouncer

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


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_behind_pgbouncer_without_a_direct_url_worker_and_beat_say_what_to_set(
        procfile_env, app_db, role):
    with pgbouncer.pgbouncer(app_db, pool_size=POOL_SIZE) as bouncer_url:
        # Given DATABASE_URL on a PgBouncer and no DATABASE_DIRECT_URL
        procfile_env.env.update(DATABASE_URL=bouncer_url)
        procfile_env.env.pop("DATABASE_DIRECT_URL", None)

        # When the Procfile's worker or beat starts
        done = procfile_env.run(role)

    # Then it does not start (its LISTEN, its lock and its prepared statements would share
    # server sessions with other clients), and says in one line what to set
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "pgjobs: DATABASE_URL goes through a connection pooler (such as PgBouncer): set "
        "DATABASE_DIRECT_URL to PostgreSQL itself (or, for a pooler in session mode, to the "
        "same URL), for the connections that need a session of their own (LISTEN, beat's "
        "leader lock, prepared statements)")


def test_a_broker_url_on_pgbouncer_is_refused_at_start(procfile_env, app_db):
    with pgbouncer.pgbouncer(app_db, pool_size=POOL_SIZE) as bouncer_url:
        # Given a BROKER_URL of its own on the pooler: the broker's LISTEN and prepared
        # statements would go there, with no direct URL of its own
        procfile_env.env.update(DATABASE_URL=app_db, BROKER_URL=bouncer_url)

        done = procfile_env.run("worker")

    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "pgjobs: BROKER_URL goes through a connection pooler (such as PgBouncer): point it at "
        "PostgreSQL itself, or leave it unset for the broker to share DATABASE_URL and "
        "DATABASE_DIRECT_URL")
