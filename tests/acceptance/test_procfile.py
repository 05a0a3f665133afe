"""The Procfile's release, worker and beat lines, run as an operator would run them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.acceptance.conftest import wait_until

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
