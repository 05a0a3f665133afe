"""The connection budget: a worker of concurrency N holds at most N + 4 connections."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import psycopg
import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

CONCURRENCY = 4

# Sixteen emails and a clean-up, every result awaited: each pool child runs tasks that query
# the database and stores their results.
WORK = """
from tasks import delete_old_data, send_sign_in_email
sent = [send_sign_in_email.delay(email=f"user{i}@example.com", name="U", code="123456")
        for i in range(16)]
cleanups = [delete_old_data.delay() for _ in range(4)]
assert all(result.get(timeout=60)["sent"] for result in sent)
for result in cleanups:
    result.get(timeout=60)
"""


def _connections(url: str) -> Counter:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchall()
    return Counter(name or "tasks and results" for (name,) in rows)


def test_a_worker_of_concurrency_n_holds_at_most_n_plus_4_connections(procfile_env, app_db):
    # given a worker of concurrency 4 that ran tasks in every child
    assert procfile_env.run("release").returncode == 0
    log = procfile_env.start("worker", f"--concurrency={CONCURRENCY}")
    wait_until(lambda: "ready." in log.read_text(), 60, "the worker to be ready")
    work = subprocess.run([sys.executable, "-c", WORK], env=procfile_env.env,
                          capture_output=True, text=True, timeout=120)
    assert work.returncode == 0, work.stderr

    # when it settles (start-up's revoke reads end soon after it is ready)
    budget = CONCURRENCY + 4
    wait_until(lambda: sum(_connections(app_db).values()) <= budget, 30,
               f"at most {budget} connections", lambda: str(_connections(app_db)))

    # then it stays within its budget: one connection per child, four in the main process
    time.sleep(3)
    held = _connections(app_db)
    assert sum(held.values()) <= budget, held
    assert held["tasks and results"] <= CONCURRENCY, held
    assert "pgjobs-results" not in held, held
