"""The Procfile's processes with DATABASE_URL on a PgBouncer in transaction mode, and
DATABASE_DIRECT_URL on PostgreSQL itself for what needs a session (LISTEN, beat's lock,
migrations)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.broker import pgbouncer
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

POOL_SIZE = 2

# Five emails, then a clean-up whose result is awaited with the safety-net poll at 30 s:
# only the NOTIFY on the direct LISTEN connection can deliver it within the deadline.
PRODUCE = """
import json
from config.celery import app
from tasks import delete_old_data, send_sign_in_email
app.conf.result_backend_transport_options = {
    **app.conf.result_backend_transport_options, "poll_interval": 30}
for i in range(5):
    send_sign_in_email.delay(email=f"user{i}@example.com", name="User", code=f"70000{i}")
print(json.dumps(delete_old_data.delay().get(timeout=20)))
"""


def _codes(inbox) -> Counter:
    return Counter(re.search(r"code is: (\d+)", message.get_body(("plain",)).get_content())[1]
                   for message in inbox.messages)


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
        # given the release phase ran, and beat holds a one-off entry due in a few seconds
        release = procfile_env.run("release")
        assert release.returncode == 0, release.stderr
        due = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
        added = subprocess.run(
            ["pgjobs", "schedule", "add", "once", "--task", "tasks.send_sign_in_email",
             "--at", due, "--kwargs",
             json.dumps({"email": "beat@example.com", "name": "Beat", "code": "600000"})],
            env=procfile_env.env, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr

        # when a worker and beat run, and a producer publishes and awaits a result
        worker_log = procfile_env.start("worker")
        procfile_env.start("beat")
        wait_until(lambda: "ready." in worker_log.read_text(), 60, "the worker to be ready")
        produced = subprocess.run([sys.executable, "-c", PRODUCE], env=procfile_env.env,
                                  capture_output=True, text=True, timeout=60)

        # then the result came back, and every email went out exactly once
        assert produced.returncode == 0, produced.stderr
        assert "celery_taskmeta" in json.loads(produced.stdout)
        expected = Counter({f"70000{i}": 1 for i in range(5)} | {"600000": 1})
        wait_until(lambda: sum(_codes(inbox).values()) >= 6, 60, "six emails",
                   lambda: f"{_codes(inbox)}\n{worker_log.read_text()[-3000:]}")
        time.sleep(2)  # a duplicate would have arrived by now
        assert _codes(inbox) == expected

        # and PostgreSQL saw only PgBouncer's pool and the two sessions that need their own
        names = _client_backends(app_db)
        assert "pgjobs-broker-listen" in names
        assert any(name.startswith("pgjobs-beat:") for name in names)
        assert len(names) <= POOL_SIZE + 2, names
