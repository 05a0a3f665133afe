"""Worker-side operations: durable revokes, and ``inspect scheduled`` reading PostgreSQL.

With pgjobs' transport an ETA task waits in the message table until shortly before its
ETA, not in a worker's memory, so Celery's own ``scheduled`` would answer ``[]`` while
work is scheduled. The ``scheduled`` command here answers what the worker's timer holds,
as Celery does, followed by the ETA messages waiting in PostgreSQL for the queues this
worker consumes. Arguments are shown as Celery shows them everywhere: the task's
``argsrepr``/``kwargsrepr``, which a task may redact.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from celery import Celery
from celery.worker import control
from celery.worker.control import inspect_command

from broker.admin import Admin, ScheduledMessage
from config.errors import one_line
from config.revokes import LoadRevokes
from config.settings import get_settings

logger = logging.getLogger(__name__)

SCHEDULED_LIMIT = 1000
"""Most ETA messages one worker lists from the table."""


def install(app: Celery) -> None:
    """Add the durable-revokes bootstep to ``app``'s workers."""
    app.steps["worker"].add(LoadRevokes)


@inspect_command(alias="dump_schedule")
def scheduled(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """List of scheduled ETA/countdown tasks: held by this worker, then waiting in PostgreSQL."""
    held = list(control._iter_schedule_requests(state.consumer.timer))
    try:
        waiting = _waiting(_consumed_queues(state))
    except psycopg.Error as error:
        logger.warning("pgjobs: could not list ETA messages (%s)", one_line(error))
        waiting = []
    return held + [_entry(message, state.hostname) for message in waiting]


def _consumed_queues(state: Any) -> list[str]:
    task_consumer = getattr(state.consumer, "task_consumer", None)
    return [queue.name for queue in getattr(task_consumer, "queues", None) or []]


def _waiting(queues: list[str]) -> list[ScheduledMessage]:
    if not queues:
        return []
    with Admin(get_settings().require_database_url()) as admin:
        return admin.scheduled(queues, SCHEDULED_LIMIT)


def _entry(message: ScheduledMessage, hostname: str) -> dict[str, Any]:
    """One message in the shape of Celery's own ``scheduled`` replies."""
    summary = message.summary
    return {
        "eta": summary.eta or message.visible_at.isoformat(),
        "priority": message.priority,
        "request": {
            "id": summary.task_id, "name": summary.task, "type": summary.task,
            "args": summary.argsrepr, "kwargs": summary.kwargsrepr,
            "hostname": hostname, "time_start": None, "acknowledged": False,
            "delivery_info": {"exchange": "", "routing_key": message.queue,
                              "priority": message.priority, "redelivered": False},
            "worker_pid": None,
        },
    }
