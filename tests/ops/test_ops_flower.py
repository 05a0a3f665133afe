"""Flower against pgjobs' broker: a real Flower process, read through its HTTP API."""

from __future__ import annotations

import json
import urllib.request

import pytest
from processes import BIN, nodename

from tests.polling import wait_until
from tests.tasks.task_helpers import free_port

pytestmark = pytest.mark.acceptance


def api(port: int, path: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.loads(response.read())
    except OSError:  # not listening yet
        return {}


def test_flower_shows_workers_and_task_states(processes, cli):
    from tasks import send_sign_in_email

    # Given a worker (events off: Flower turns them on) and Flower
    worker = processes.worker("flowered")
    node = nodename("flowered")
    port = free_port()
    processes.env["FLOWER_UNAUTHENTICATED_API"] = "1"
    processes.start("flower", str(BIN / "celery"), "-A", "config", "flower",
                    f"--port={port}", "--address=127.0.0.1")

    # When Flower has found the worker and a task runs
    wait_until(lambda: node in api(port, "/api/workers?refresh=1"), 60,
               "Flower to list the worker", processes.logs)
    wait_until(lambda: "Events of group {task} enabled by remote" in worker.text(), 60,
               "Flower to turn the worker's events on", processes.logs)
    task_id = send_sign_in_email.apply_async(
        kwargs={"email": "ada@example.com", "name": "Ada", "code": "123456"}).id

    # Then Flower reports the task's name and final state from the worker's events
    task = wait_until(lambda: api(port, f"/api/task/info/{task_id}").get("state") == "SUCCESS"
                      and api(port, f"/api/task/info/{task_id}"), 60,
                      "Flower to see the task succeed", processes.logs)
    assert task["name"] == "tasks.send_sign_in_email" and task["worker"] == node

    # ... while pgjobs status counts the worker only, not Flower's event consumer
    workers = json.loads(cli("status", "--json").stdout)["workers"]
    assert [worker["name"] for worker in workers] == [node]
