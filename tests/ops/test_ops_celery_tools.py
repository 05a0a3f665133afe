"""Celery's own tools against pgjobs' broker, with a real worker: ``inspect report``,
``conf`` and ``scheduled`` (which lists the ETA tasks waiting in PostgreSQL), and the
other inspect and control commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from processes import nodename

pytestmark = pytest.mark.acceptance


def replies(result) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict = {}
    for line in result.stdout.splitlines():
        if line.strip().startswith("{"):
            found.update(json.loads(line))
        elif line.strip().startswith("["):  # `celery control` prints a list of replies
            for reply in json.loads(line):
                found.update(reply)
    return found


def test_inspect_report_conf_and_scheduled(processes):
    from tasks import send_sign_in_email

    # Given a worker, and an ETA task waiting in PostgreSQL whose arguments are redacted
    processes.worker("tools")
    node = nodename("tools")
    task = send_sign_in_email.apply_async(
        kwargs={"email": "ada@example.com", "name": "Ada", "code": "123456"},
        countdown=3600, kwargsrepr="{'email': '***', 'code': '***'}")

    # When Celery's inspect commands are run
    report = replies(processes.celery("inspect", "report", "--json", "-d", node))
    conf = replies(processes.celery("inspect", "conf", "--json", "-d", node))
    scheduled = replies(processes.celery("inspect", "scheduled", "--json", "-d", node))

    # Then each answers, with no "No such transport" error
    assert "psycopg" in report[node]["ok"]
    assert conf[node]["broker_transport"] == "broker.transport:Transport"
    [entry] = scheduled[node]
    assert entry["request"]["id"] == task.id
    assert entry["request"]["name"] == "tasks.send_sign_in_email"
    assert entry["request"]["kwargs"] == "{'email': '***', 'code': '***'}"
    assert datetime.fromisoformat(entry["eta"]) > datetime.now(UTC) + timedelta(minutes=50)
    assert "123456" not in json.dumps(scheduled)


def test_other_inspect_and_control_commands_answer(processes):
    # Given a worker
    worker = processes.worker("controlled")
    node = nodename("controlled")

    # When asked what it runs and holds, Then it answers
    assert replies(processes.celery("inspect", "active", "--json", "-d", node)) == {node: []}
    assert replies(processes.celery("inspect", "reserved", "--json", "-d", node)) == {node: []}
    stats = replies(processes.celery("inspect", "stats", "--json", "-d", node))[node]
    assert stats["broker"]["transport"] == "broker.transport:Transport"

    # When its rate limit is changed, Then it confirms
    limited = replies(processes.celery("control", "rate_limit", "tasks.send_sign_in_email",
                                       "10/m", "--json", "-d", node))
    assert "new rate limit set successfully" in limited[node]["ok"]

    # When it is told to shut down (a command without a reply), Then it exits cleanly
    processes.celery("control", "shutdown", "-d", node)
    assert worker.popen.wait(timeout=60) == 0
    assert "Got shutdown from remote" in worker.text()
