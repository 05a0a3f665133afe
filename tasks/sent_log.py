"""The sent-email log (``pgjobs_sent_email``): at most one email per Celery task id.

:func:`claim` inserts the task's row in a transaction that stays open while the
email is handed over. A second delivery of the same task (a redelivery after a
lost acknowledgement, or a duplicate running at the same time) blocks on that row
until the first commits, then finds it and sends nothing. If sending fails the
transaction rolls back and the next attempt may send.

The window that remains: SMTP accepted the message but the commit never happened
(the process was killed, or the database went away, between the two). The row is
then missing and a redelivery sends the email a second time. SMTP offers no way to
make hand-over and commit atomic, so this is as narrow as it gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tasks import queries
from tasks.db import engine


@contextmanager
def claim(task_id: str, recipient: str, subject: str, message_id: str | None) -> Iterator[bool]:
    """Yield True if this task id may send now, False if its email already went out.

    The claim is committed when the block exits normally and rolled back if it raises.
    """
    with engine().begin() as connection:
        row = connection.execute(
            queries.CLAIM_SENT_EMAIL,
            {
                "task_id": task_id,
                "recipient": recipient,
                "subject": subject,
                "message_id": message_id,
            },
        ).first()
        yield row is not None
