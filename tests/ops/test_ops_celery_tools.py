"""Celery's own tools against pgjobs' broker, with a real worker: ``inspect report``,
``conf`` and ``scheduled`` (which lists the ETA tasks waiting in PostgreSQL), the other
inspect and control commands, and none of them showing the database password."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from processes import Processes, nodename, process_env
from sqlalchemy.engine import make_url

from tests.beat.beat_helpers import beat_command, leader_application
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

# The test server trusts local connections, so any password gets in: only its display matters.
PASSWORD = "s3cretpw"
DIRECT_PASSWORD = "d1rectpw"


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


@pytest.fixture(params=["database-url", "database-and-direct-url"])
def processes_with_password(request, app_db: str, tmp_path):
    """Real processes on the test's database, reached with a password in DATABASE_URL and,
    in the second case, another in DATABASE_DIRECT_URL (LISTEN, results, beat's lock)."""
    env = process_env(make_url(app_db).set(password=PASSWORD).render_as_string(False))
    if request.param == "database-and-direct-url":
        env["DATABASE_DIRECT_URL"] = make_url(app_db).set(
            password=DIRECT_PASSWORD).render_as_string(False)
    started = Processes(env, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def test_no_celery_tool_shows_the_database_password(processes_with_password, app_db, tmp_path):
    processes = processes_with_password
    # Given a worker, and a beat that leads, started with the passwords in their URLs
    worker = processes.worker("guarded")
    node = nodename("guarded")
    beat = processes.start("beat", *beat_command(tmp_path / "beat-schedule"))
    wait_until(lambda: "is now the leader" in beat.text(), 60, "beat to lead", beat.tail)
    assert (leader_application(app_db) or "").startswith("pgjobs-beat:")

    # When Celery's reporting tools are run against them
    report = processes.celery("report")
    answers = {command: processes.celery("inspect", command, "--json", "-d", node)
               for command in ("conf", "report", "stats")}

    # Then each succeeds, and neither they nor the worker's and beat's logs show a password
    assert report.returncode == 0, report.stderr
    assert "broker.transport:Transport" in report.stdout
    for command, result in answers.items():
        assert replies(result)[node], command
    shown = {"report": report.stdout + report.stderr, "worker log": worker.text(),
             "beat log": beat.text()}
    shown |= {f"inspect {command}": result.stdout + result.stderr
              for command, result in answers.items()}
    assert "transport:" in shown["worker log"]
    assert [(name, password) for name, text in shown.items()
            for password in (PASSWORD, DIRECT_PASSWORD) if password in text] == []
