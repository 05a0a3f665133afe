"""One deployment's worth of work, run through the Procfile: the release phase, a worker, a
beat with a one-off entry, and a producer that publishes emails and awaits a result.

Deployment tests (PgBouncer, RabbitMQ as the broker, ...) change the environment, run this,
then check what is particular to them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.polling import wait_until

# Five emails, then a clean-up whose result is awaited with the safety-net poll at 30 s:
# only the NOTIFY on the LISTEN connection can deliver it within the deadline.
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
PRODUCED = {f"70000{i}" for i in range(5)}
BEAT_CODE = "600000"


def codes(inbox) -> Counter:
    """How many emails arrived per sign-in code."""
    return Counter(re.search(r"code is: (\d+)", message.get_body(("plain",)).get_content())[1]
                   for message in inbox.messages)


def run_deployment(processes, inbox) -> Path:
    """Run the scenario; assert the result came back and every email of it went out exactly
    once. Returns the worker's log."""
    release = processes.run("release")
    assert release.returncode == 0, release.stderr
    due = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    added = subprocess.run(
        ["pgjobs", "schedule", "add", "once", "--task", "tasks.send_sign_in_email",
         "--at", due, "--kwargs",
         json.dumps({"email": "beat@example.com", "name": "Beat", "code": BEAT_CODE})],
        env=processes.env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr

    worker_log = processes.start("worker")
    processes.start("beat")
    wait_until(lambda: "ready." in worker_log.read_text(), 60, "the worker to be ready")
    produced = subprocess.run([sys.executable, "-c", PRODUCE], env=processes.env,
                              capture_output=True, text=True, timeout=60)

    assert produced.returncode == 0, produced.stderr
    # With its LISTEN connection down, the producer would have polled every second instead.
    assert "LISTEN connection lost" not in produced.stderr, produced.stderr
    assert "celery_taskmeta" in json.loads(produced.stdout)
    expected = PRODUCED | {BEAT_CODE}

    def ours() -> Counter:
        return Counter({code: n for code, n in codes(inbox).items() if code in expected})

    wait_until(lambda: len(ours()) == len(expected), 60, "every email",
               lambda: f"{codes(inbox)}\n{worker_log.read_text()[-3000:]}")
    time.sleep(2)  # a duplicate would have arrived by now
    assert ours() == Counter(dict.fromkeys(expected, 1))
    return worker_log
