"""The ``tasks.send_sign_in_email`` task."""

from __future__ import annotations

import logging
import math
import time
import uuid
from email.message import EmailMessage
from typing import Any

from celery import Task
from psycopg import OperationalError as DriverOperationalError
from sqlalchemy.exc import OperationalError

from broker.results import PrivateArgsTask
from config.celery import app
from config.settings import Settings, SettingsError, get_settings
from tasks import sent_log
from tasks.errors import EmailInProgressError, PermanentEmailError, TransientEmailError
from tasks.message import SIGN_IN_SUBJECT, check_recipient, sign_in_message
from tasks.outbox import write_to_outbox
from tasks.smtp import EXCHANGE_TIMEOUT_SECONDS, deliver

logger = logging.getLogger(__name__)

# Backoff: 5 s, 10 s, 20 s ... capped at 10 minutes, with full jitter so that many tasks
# failing together (SMTP server down) do not all come back at the same moment. Eight
# retries span at most about 20 minutes, longer than a sign-in code is worth waiting for.
RETRY_BACKOFF_SECONDS = 5
RETRY_BACKOFF_MAX_SECONDS = 600
MAX_RETRIES = 8
# A delivery that finds another one's lease running comes back this long after it lapses.
LEASE_RETRY_SLACK_SECONDS = 1
_DATABASE_ERRORS = (OperationalError, DriverOperationalError)


@app.task(
    bind=True,
    name="tasks.send_sign_in_email",
    # The code is a secret: kept out of the results table, the log lines and task events.
    base=PrivateArgsTask,
    autoretry_for=(TransientEmailError, *_DATABASE_ERRORS),
    retry_backoff=RETRY_BACKOFF_SECONDS,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
    # Expected failures: recorded as FAILURE, logged without a traceback.
    throws=(PermanentEmailError, SettingsError),
)
def send_sign_in_email(self: Task, email: str, name: str, code: str) -> dict[str, Any]:
    """Email ``code`` to ``email``, greeting ``name``; at most once per task id.

    Returns ``{"task_id", "recipient", "message_id", "sent"}``; ``sent`` is False when
    this task id's email had already gone out (a redelivery). A delivery that finds
    another one sending the same task id right now sends nothing and retries once that
    one's lease has lapsed (see :mod:`tasks.sent_log`). No transaction stays open while
    the email is handed over.
    """
    recipient = check_recipient(email)
    settings = get_settings()
    message = sign_in_message(recipient, name, code, settings.mail_from)
    # Called as a plain function there is no task id, and so nothing to deduplicate.
    task_id = self.request.id or str(uuid.uuid4())
    message_id = message["Message-ID"]
    # Taken before the lease starts, so that the exchange stops sending before it lapses.
    deadline = time.monotonic() + EXCHANGE_TIMEOUT_SECONDS
    claim = sent_log.claim(task_id, recipient, SIGN_IN_SUBJECT, message_id)
    if claim.holder is None and not claim.sent:
        raise _retry_after_lease(self, task_id, claim.seconds_left)
    if claim.holder is None:
        logger.info("sign-in email of task %s already sent; not sending again", task_id)
    else:
        _send_holding(claim.holder, message, task_id, settings, deadline)
    # The code stays out of the result: results are stored in the database.
    return {"task_id": task_id, "recipient": recipient, "message_id": message_id,
            "sent": claim.holder is not None}


def _retry_after_lease(task: Task, task_id: str, seconds_left: float) -> Exception:
    countdown = math.ceil(seconds_left) + LEASE_RETRY_SLACK_SECONDS
    busy = EmailInProgressError(
        f"sign-in email of task {task_id} is being sent by another delivery; "
        f"trying again in {countdown} s, once its lease has lapsed")
    return task.retry(countdown=countdown, exc=busy)


def _send_holding(holder: str, message: EmailMessage, task_id: str, settings: Settings,
                  deadline: float) -> None:
    try:
        _hand_over(message, task_id, settings, deadline)
    except BaseException:
        _release_quietly(task_id, holder)
        raise
    try:
        sent_log.mark_sent(task_id, holder)
    except _DATABASE_ERRORS as error:
        # Raising would retry, and the retry would send the email again once the lease
        # lapsed: the email went out, so the task succeeds and says what is left behind.
        logger.warning("sign-in email of task %s was sent but could not be recorded as sent "
                       "(%s); its row stays 'sending' until the lease lapses",
                       task_id, type(error).__name__)


def _release_quietly(task_id: str, holder: str) -> None:
    # The send failed: that failure is what the task reports. Should the release fail too,
    # the retry waits for the lease to lapse instead.
    try:
        sent_log.release(task_id, holder)
    except _DATABASE_ERRORS as error:
        logger.warning("could not release the lease on the sign-in email of task %s (%s)",
                       task_id, type(error).__name__)


def _hand_over(message: EmailMessage, task_id: str, settings: Settings, deadline: float) -> None:
    target = settings.smtp
    if target is None:
        path = write_to_outbox(message, settings.outbox_dir, task_id)
        logger.info("SMTP_URL is not set: sign-in email to %s written to %s", message["To"], path)
        return
    deliver(message, target, deadline=deadline)
    logger.info("sign-in email to %s sent via %s:%s", message["To"], target.host, target.port)
