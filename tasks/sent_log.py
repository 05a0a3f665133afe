"""The sent-email log (``pgjobs_sent_email``): at most one email per Celery task id, and no
transaction open while the email is handed over.

A delivery of a task first :func:`claim`\\ s the task id in a short transaction: it commits
a "sending" row holding a lease (``lease_holder`` may send until ``lease_until``). It then
sends with no transaction open, and :func:`mark_sent` records the row as sent in another
short transaction (``lease_until`` NULL). If sending fails, :func:`release` deletes the
row so that the task's retry may claim it again.

Another delivery of the same task id (a redelivery after a lost acknowledgement or a dead
worker, or a duplicate running at the same time) finds one of three things:

- the row is sent: it sends nothing;
- the row is sending and its lease runs: the holder is on it right now, or died so
  recently that nobody can tell. It sends nothing now and is told how long the lease
  still runs, to try again once it has lapsed (skipping instead would lose the email
  whenever the holder died: its redelivery arrives while the lease still runs);
- the lease lapsed: the holder died mid-send (or hung past its deadline, when it stops
  sending by itself). It takes the lease over and sends.

The lease outlasts the whole SMTP exchange (:data:`LEASE_SECONDS`), so a live holder is
never overtaken while it may still be sending. The window that remains is the one any
design has: the SMTP server accepted the message but the row was never marked sent (the
process was killed, or the database went away, between the two). The lease then lapses
and a redelivery sends the email a second time. SMTP offers no way to make hand-over and
record atomic, so this is as narrow as it gets.

Rows of releases before the lease existed have no lease: they were committed after the
send, and count as sent. A worker of such a release takes any row, "sending" ones too, as
sent, so while both releases run, a redelivery that reaches an old worker after a new one
died mid-send is not sent again.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass

from tasks import queries
from tasks.db import engine
from tasks.smtp import EXCHANGE_TIMEOUT_SECONDS

logger = logging.getLogger(__name__)

# What the lease must cover beyond the SMTP exchange itself (which stops sending by its
# deadline, started before the lease): the transaction that marks the row sent, whose
# connection alone may take libpq's 5 s connect timeout, and a loaded worker being slow to
# get there. A lease that lapses too early risks a duplicate; one too long only delays
# the redelivery after a crash.
LEASE_MARGIN_SECONDS = 30.0
LEASE_SECONDS = EXCHANGE_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim`: ``holder`` is set when this delivery may send now."""

    holder: str | None = None
    sent: bool = False
    # When another delivery holds the lease: seconds until it lapses.
    seconds_left: float = 0.0


def claim(task_id: str, recipient: str, subject: str, message_id: str | None) -> Claim:
    """Take the lease on ``task_id`` for :data:`LEASE_SECONDS`, unless its email was sent or
    another delivery holds a lease that still runs. Commits before returning."""
    holder = _new_holder()
    with engine().begin() as connection:
        granted = connection.execute(queries.CLAIM_SENT_EMAIL, {
            "task_id": task_id, "recipient": recipient, "subject": subject,
            "message_id": message_id, "holder": holder, "lease_seconds": LEASE_SECONDS,
        }).first()
        if granted is not None:
            return Claim(holder=holder)
        state = connection.execute(queries.SENT_EMAIL_STATE, {"task_id": task_id}).first()
    if state is None:  # released by its holder just now: try again soon
        return Claim()
    return Claim(sent=state.sent, seconds_left=state.seconds_left or 0.0)


def mark_sent(task_id: str, holder: str) -> bool:
    """Record the email of ``task_id`` as sent; False if ``holder`` had lost its lease to
    another delivery, which may then send the email too (the cause is logged)."""
    with engine().begin() as connection:
        marked = connection.execute(
            queries.MARK_EMAIL_SENT, {"task_id": task_id, "holder": holder}
        ).first()
    if marked is None:
        logger.warning(
            "the lease on the sign-in email of task %s lapsed before it was recorded as "
            "sent, and another delivery took it over: the email may arrive twice", task_id)
    return marked is not None


def release(task_id: str, holder: str) -> None:
    """Give up the lease after a failed send, so that a retry may send at once."""
    with engine().begin() as connection:
        connection.execute(queries.RELEASE_SENT_EMAIL, {"task_id": task_id, "holder": holder})


def _new_holder() -> str:
    # Unique per claim; host and pid tell an operator which worker holds (or sent) a row.
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
