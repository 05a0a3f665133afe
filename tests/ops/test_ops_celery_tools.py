"""Celery's own tools against pgjobs' broker, with a real worker: ``inspect report``,
``conf`` and ``scheduled`` (which lists the ETA tasks waiting in PostgreSQL)."""

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
