"""The Procfile's release, worker and beat lines, run as an operator would run them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

ENQUEUE_WITH_ETA = """
import datetime, json, time
from tasks import send_sign_in_email
eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)
result = send_sign_in_email.apply_async(
    kwargs={"email": "ada@example.com", "name": "Ada", "code": "424242"}, eta=eta)
print(json.dumps({"eta": eta.timestamp(), "id": result.id}))
"""


def test_eta_email_sent_by_procfile_worker_arrives_no_earlier_than_eta(procfile_env, smtp_inbox):
    inbox, _ = smtp_inbox
    # given the release phase has run, and a worker and beat are up
    assert procfile_env.run("release").returncode == 0
    listing = subprocess.run(["pgjobs", "schedule", "list"], env=procfile_env.env,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert re.search(r"^delete_old_data\s+tasks.delete_old_data\s+0 4 \* \* \* UTC\s+yes",
                     listing, re.MULTILINE)
    worker_log = procfile_env.start("worker")
    procfile_env.start("beat")
    wait_until(lambda: "ready." in worker_log.read_text(), 60, "the worker to be ready")

    # when another process enqueues a sign-in email four seconds ahead
    enqueued = subprocess.run([sys.executable, "-c", ENQUEUE_WITH_ETA], env=procfile_env.env,
                              capture_output=True, text=True, timeout=60, check=True)
    eta = json.loads(enqueued.stdout)["eta"]

    # then the email arrives, and not before its ETA
    wait_until(lambda: inbox.arrivals, 60, "the sign-in email")
    assert inbox.arrivals[0] >= eta
    assert "424242" in inbox.messages[0].get_body(("plain",)).get_content()
    assert inbox.messages[0]["To"].addresses[0].addr_spec == "ada@example.com"


CLEAN_UP = """
import json
from tasks import delete_old_data
print(json.dumps(delete_old_data.delay().get(timeout=60)))
"""


def test_clean_up_through_procfile_worker_returns_counts(procfile_env):
    # given the release phase has run and a worker is up
    assert procfile_env.run("release").returncode == 0
    worker_log = procfile_env.start("worker")
    wait_until(lambda: "ready." in worker_log.read_text(), 60, "the worker to be ready")

    # when the clean-up is queued and its result awaited
    done = subprocess.run([sys.executable, "-c", CLEAN_UP], env=procfile_env.env,
                          capture_output=True, text=True, timeout=90, check=True)

    # then it reports a count for each table of the retention registry
    counts = json.loads(done.stdout)
    assert counts == {"celery_taskmeta": 0, "celery_tasksetmeta": 0, "pgjobs_chord": 0,
                      "pgjobs_sent_email": 0, "pgjobs_broker_dead_letter": 0,
                      "pgjobs_revoked_task": 0}
