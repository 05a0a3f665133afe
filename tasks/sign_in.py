"""The ``tasks.send_sign_in_email`` task."""

from __future__ import annotations

import logging
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
from tasks.errors import PermanentEmailError, TransientEmailError
from tasks.message import SIGN_IN_SUBJECT, check_recipient, sign_in_message
from tasks.outbox import write_to_outbox
from tasks.smtp import deliver

logger = logging.getLogger(__name__)

# Backoff: 5 s, 10 s, 20 s ... capped at 10 minutes, with full jitter so that many tasks
# failing together (SMTP server down) do not all come back at the same moment. Eight
# retries span at most about 20 minutes, longer than a sign-in code is worth waiting for.
RETRY_BACKOFF_SECONDS = 5
RETRY_BACKOFF_MAX_SECONDS = 600
MAX_RETRIES = 8


@app.task(
    bind=True,
    name="tasks.send_sign_in_email",
    # The code is a secret: kept out of the results table, the log lines and task events.
    base=PrivateArgsTask,
    autoretry_for=(TransientEmailError, OperationalError, DriverOperationalError),
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
    this task id's email had already gone out (a redelivery).
    """
    recipient = check_recipient(email)
    settings = get_settings()
    message = sign_in_message(recipient, name, code, settings.mail_from)
    # Called as a plain function there is no task id, and so nothing to deduplicate.
    task_id = self.request.id or str(uuid.uuid4())
    message_id = message["Message-ID"]
    with sent_log.claim(task_id, recipient, SIGN_IN_SUBJECT, message_id) as may_send:
        if may_send:
            _hand_over(message, task_id, settings)
        else:
            logger.info("sign-in email of task %s already sent; not sending again", task_id)
    # The code stays out of the result: results are stored in the database.
    return {"task_id": task_id, "recipient": recipient, "message_id": message_id,
            "sent": may_send}


def _hand_over(message: EmailMessage, task_id: str, settings: Settings) -> None:
    target = settings.smtp
    if target is None:
        path = write_to_outbox(message, settings.outbox_dir, task_id)
        logger.info("SMTP_URL is not set: sign-in email to %s written to %s", message["To"], path)
        return
    deliver(message, target)
    logger.info("sign-in email to %s sent via %s:%s", message["To"], target.host, target.port)
