"""A sign-in code never reaches the results table, the worker's log or task events."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

CODE = "731946"
ENQUEUE = f"""
import json
from tasks import send_sign_in_email
result = send_sign_in_email.delay("ada@example.com", "Ada", code="{CODE}")
print(json.dumps({{"id": result.id}}))
"""
EVERY_RESULT_COLUMN = """
SELECT task_id, status, convert_from(coalesce(result, ''), 'UTF8'),
       convert_from(coalesce(args, ''), 'UTF8'), convert_from(coalesce(kwargs, ''), 'UTF8'),
       coalesce(traceback, ''), name, worker, queue
FROM celery_taskmeta
"""


def test_the_code_is_in_the_email_only(procfile_env, smtp_inbox):
    inbox, _ = smtp_inbox
    # given a sign-in email queued with result_extended on (pgjobs' default)
    assert procfile_env.run("release").returncode == 0
    enqueued = subprocess.run([sys.executable, "-c", ENQUEUE], env=procfile_env.env,
                              capture_output=True, text=True, timeout=60, check=True)
    task_id = json.loads(enqueued.stdout)["id"]
    database_url = procfile_env.env["DATABASE_URL"]
    with psycopg.connect(database_url) as conn:
        (payload,) = conn.execute("SELECT payload FROM pgjobs_broker_message").fetchone()
    headers = json.loads(payload)["headers"]

    # when a worker (the Procfile's, at INFO) sends it
    worker_log = procfile_env.start("worker")
    wait_until(lambda: inbox.messages, 60, "the sign-in email")
    wait_until(lambda: _stored(database_url, task_id), 30, "the task's result")

    # then the code went out by email
    assert CODE in inbox.messages[0].get_body(("plain",)).get_content()
    # and the argument summaries that log lines and task events show hide it
    assert CODE not in headers["argsrepr"] + headers["kwargsrepr"]
    # and no column of any stored result holds it
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(EVERY_RESULT_COLUMN).fetchall()
    assert [row[:2] for row in rows] == [(task_id, "SUCCESS")]
    assert CODE not in repr(rows)
    assert "ada@example.com" in rows[0][2]  # the result itself is stored
    # and the worker's log never printed it
    log = worker_log.read_text()
    assert f"Task tasks.send_sign_in_email[{task_id}] succeeded" in log
    assert CODE not in log


def _stored(database_url: str, task_id: str) -> bool:
    with psycopg.connect(database_url) as conn:
        return bool(conn.execute("SELECT 1 FROM celery_taskmeta WHERE task_id = %s",
                                 (task_id,)).fetchone())
