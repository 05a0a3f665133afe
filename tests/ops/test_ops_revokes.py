"""Revokes are durable: a revoked task never runs, whichever workers were up at the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

KWARGS = {"email": "ada@example.com", "name": "Ada", "code": "123456"}


def send_at(eta: datetime) -> str:
    from tasks import send_sign_in_email

    return send_sign_in_email.apply_async(kwargs=KWARGS, eta=eta).id


def runs(sql, task_id: str) -> int:
    """How many times the task ran: each run records its id in the sent-email log."""
    return sql("SELECT count(*) FROM pgjobs_sent_email WHERE task_id = %(id)s",
               {"id": task_id})[0][0]


def state(sql, task_id: str) -> str | None:
    rows = sql("SELECT status FROM celery_taskmeta WHERE task_id = %(id)s", {"id": task_id})
    return rows[0][0] if rows else None


def test_a_revoked_eta_task_never_runs_on_workers_started_later(app_db, processes, sql):
    from config.celery import app

    # Given an ETA task revoked while no worker runs, and a second one that is not revoked
    soon = datetime.now(UTC) + timedelta(seconds=2)
    revoked, kept = send_at(soon), send_at(soon + timedelta(seconds=1))
    app.control.revoke(revoked)

    # When a worker starts after their ETA has passed
    processes.worker("late")
    wait_until(lambda: datetime.now(UTC) > soon + timedelta(seconds=1), 10, "the ETA")

    # Then it runs the kept task, and records the revoked one as revoked without running it
    wait_until(lambda: state(sql, kept) == "SUCCESS", 30, "the kept task", processes.logs)
    wait_until(lambda: state(sql, revoked) == "REVOKED", 30, "the revoke", processes.logs)
    assert (runs(sql, kept), runs(sql, revoked)) == (1, 0)


def test_a_revoke_survives_a_restart_of_every_worker(app_db, processes, sql):
    from config.celery import app

    # Given a running worker, an ETA task revoked while it runs, and one that is not
    first = processes.worker("first")
    eta = datetime.now(UTC) + timedelta(seconds=6)
    revoked, kept = send_at(eta), send_at(eta + timedelta(seconds=1))
    app.control.revoke(revoked)

    # When every worker is killed, and a new one starts after the ETA
    first.kill()
    wait_until(lambda: datetime.now(UTC) > eta + timedelta(seconds=1), 15, "the ETA")
    processes.worker("second")

    # Then the new worker runs the kept task only
    wait_until(lambda: state(sql, kept) == "SUCCESS", 30, "the kept task", processes.logs)
    wait_until(lambda: state(sql, revoked) == "REVOKED", 30, "the revoke", processes.logs)
    assert (runs(sql, kept), runs(sql, revoked)) == (1, 0)


def _revoke_sessions(sql) -> int:
    return sql("SELECT count(*) FROM pg_stat_activity"
               " WHERE application_name = 'pgjobs-revokes' AND datname = current_database()",
               {})[0][0]


def test_a_settled_worker_reads_revokes_once_a_minute_on_a_connection_it_then_closes(
        app_db, sql, monkeypatch):
    from celery.worker import state as worker_state

    from config import revokes

    clock = [1000.0]
    monkeypatch.setattr(revokes.time, "monotonic", lambda: clock[0])
    step = revokes.LoadRevokes(parent=None)
    step._settles_at = revokes.math.inf

    # while starting, every refresh reads on a connection it keeps
    clock[0] += 3600
    revokes.record(["revoked-while-starting"])
    step.refresh()
    assert "revoked-while-starting" in worker_state.revoked
    assert _revoke_sessions(sql) == 1

    # once settled, soon after the worker is ready, a refresh reads and lets go of the
    # connection...
    step.ready()
    clock[0] += revokes.SETTLE_SECONDS + 1
    revokes.record(["revoked-later"])
    step.refresh()
    assert "revoked-later" in worker_state.revoked
    assert _revoke_sessions(sql) == 0

    # ...and the next refreshes within the minute do not read at all
    revokes.record(["revoked-within-the-minute"])
    clock[0] += revokes.SETTLED_REFRESH_SECONDS - 1
    step.refresh()
    assert "revoked-within-the-minute" not in worker_state.revoked
    clock[0] += 1
    step.refresh()
    assert "revoked-within-the-minute" in worker_state.revoked
