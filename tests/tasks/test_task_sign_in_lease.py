"""tasks.send_sign_in_email's lease: no transaction open across SMTP, still one email per task.

A real SMTP server holds a session at a chosen step while the test looks at PostgreSQL,
delivers the same task id again, or SIGKILLs the process that was sending.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from task_helpers import hold_first, recorded_retries

from tasks import send_sign_in_email, sent_log
from tasks.errors import EmailInProgressError
from tasks.sign_in import MAX_RETRIES
from tests.polling import wait_until

KWARGS = {"email": "ada@example.com", "name": "Ada", "code": "493 817"}
ROOT = Path(__file__).resolve().parents[2]
# A sender that takes a one-second lease and is SIGKILLed while the server holds it.
SHORT_LEASE_SENDER = f"""
import sys
from tasks import send_sign_in_email, sent_log
sent_log.LEASE_SECONDS = 1.0
send_sign_in_email.apply(kwargs={KWARGS!r}, task_id=sys.argv[1])
"""


def log_row(db_url: str, task_id: str) -> tuple | None:
    """(lease_holder, lease still running?, sent?) of ``task_id``'s row, or None."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT lease_holder, coalesce(lease_until > now(), false), lease_until IS NULL"
            " FROM pgjobs_sent_email WHERE task_id = %s", (task_id,)).fetchone()


def other_backends(db_url: str) -> list[tuple[str, bool]]:
    """(state, in a transaction?) of every other client connection to the database."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT state, xact_start IS NOT NULL FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'").fetchall()


class Delivery(threading.Thread):
    """One delivery of the task, run eagerly in a thread."""

    def __init__(self, task_id: str) -> None:
        super().__init__(daemon=True)
        self.task_id, self.result = task_id, None

    def run(self) -> None:
        self.result = send_sign_in_email.apply(kwargs=KWARGS, task_id=self.task_id)


def test_no_transaction_is_open_while_the_email_is_handed_over(mailbox, app_db):
    # Given a delivery whose message the SMTP server holds in DATA
    gate = hold_first(mailbox, "DATA")
    first = Delivery("t-open")
    first.start()
    try:
        assert gate.reached.wait(30)

        # When PostgreSQL is asked about the tasks' connections meanwhile
        backends = other_backends(app_db)
        row = log_row(app_db, "t-open")
    finally:
        gate.opened.set()
        first.join(30)

    # Then the tasks' engine is connected, but none of its connections is in a transaction
    assert backends and not [b for b in backends if b[1] or b[0] == "idle in transaction"]
    # And the lease was committed before the exchange, and the email was then marked sent
    assert row[1:] == (True, False)
    assert first.result.result["sent"] is True and len(mailbox.envelopes) == 1
    assert log_row(app_db, "t-open")[2] is True


def test_a_second_delivery_while_the_first_is_sending_does_not_send(mailbox, app_db):
    # Given a first delivery whose message the SMTP server holds in DATA
    gate = hold_first(mailbox, "DATA")
    first = Delivery("t-busy")
    first.start()
    try:
        assert gate.reached.wait(30)

        # When the same task id is delivered again meanwhile
        with recorded_retries() as countdowns:
            second = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-busy")
    finally:
        gate.opened.set()
        first.join(30)

    # Then the second sent nothing and asked to come back once the lease lapsed (run
    # eagerly, each retry comes at once and finds the lease still running, until they
    # run out; a worker would have waited each countdown)
    assert isinstance(second.result, EmailInProgressError)
    lease = sent_log.LEASE_SECONDS
    assert len(countdowns) == MAX_RETRIES
    assert all(lease / 2 < countdown <= lease + 2 for countdown in countdowns)
    # And the first one's email went out once
    assert first.result.result["sent"] is True
    assert len(mailbox.envelopes) == 1 and mailbox.attempts == 1


def test_after_a_sender_died_mid_send_a_redelivery_sends_once_its_lease_lapsed(mailbox, app_db):
    # Given a sender with a short lease, SIGKILLed while the server holds it at RCPT
    # (before the message was handed over)
    gate = hold_first(mailbox, "RCPT")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sender = subprocess.Popen([sys.executable, "-c", SHORT_LEASE_SENDER, "t-died"], env=env,
                              cwd=ROOT, stderr=subprocess.PIPE)
    try:
        assert gate.reached.wait(60), sender.stderr
        dead_holder = log_row(app_db, "t-died")[0]
        sender.send_signal(signal.SIGKILL)
        sender.wait(30)

        # When a redelivery comes once the lease has lapsed
        wait_until(lambda: log_row(app_db, "t-died")[1] is False, 30, "the lease to lapse")
        redelivery = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-died")
    finally:
        gate.opened.set()
        if sender.poll() is None:
            sender.kill()
        sender.stderr.close()

    # Then it took the lease over and sent the email, once
    assert redelivery.successful(), redelivery.traceback
    assert redelivery.result["sent"] is True and len(mailbox.envelopes) == 1
    holder, _, sent = log_row(app_db, "t-died")
    assert sent is True and holder != dead_holder


def test_a_row_written_by_the_previous_release_counts_as_sent(mailbox, app_db):
    # Given a row as a worker of the release before the lease writes it
    with psycopg.connect(app_db) as conn:
        conn.execute("INSERT INTO pgjobs_sent_email (task_id, recipient, subject)"
                     " VALUES ('t-old', 'ada@example.com', 'Your sign-in code')")

    # When the same task id is delivered, Then nothing is sent
    result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-old")
    assert result.result["sent"] is False and mailbox.envelopes == []


def test_a_holder_overtaken_after_its_lease_lapsed_can_neither_mark_nor_release(
        app_db, monkeypatch: pytest.MonkeyPatch):
    # Given a lease that lapsed at once, taken over by a second delivery
    monkeypatch.setattr(sent_log, "LEASE_SECONDS", -1.0)
    first = sent_log.claim("t-over", "ada@example.com", "s", None)
    monkeypatch.undo()
    second = sent_log.claim("t-over", "ada@example.com", "s", None)
    assert first.holder and second.holder and first.holder != second.holder

    # When the first holder tries to release, then to mark the row sent, Then neither works
    sent_log.release("t-over", first.holder)
    assert sent_log.mark_sent("t-over", first.holder) is False
    assert log_row(app_db, "t-over")[:2] == (second.holder, True)
    # And the second holder, whose lease runs, marks it sent
    assert sent_log.mark_sent("t-over", second.holder) is True
    assert sent_log.claim("t-over", "ada@example.com", "s", None).sent is True
