"""Celery configuration built from :class:`config.settings.Settings`.

The broker is chosen in :func:`broker_options` and nowhere else.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from config.urls import sqlalchemy_url


def broker_options(database_url: str, settings: Settings) -> dict[str, Any]:
    """The broker: pgjobs' PostgreSQL transport (``broker/``) on the same database."""
    return {
        "broker_url": database_url,
        "broker_transport": "broker.transport:Transport",
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting pgjobs relies on, in one dict."""
    database_url = settings.require_database_url()
    return {
        **broker_options(database_url, settings),
        "broker_connection_retry_on_startup": True,
        # JSON only: pickle would let anyone who can write a message run code in a worker.
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        # A task is acknowledged after it ran, and a worker that dies mid-task gives it back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # pgjobs' result backend (broker/results) on the same database: waiters are woken by
        # NOTIFY, chords are joined in the transaction that stores their parts.
        "result_backend": "broker.results:PostgresBackend+" + database_url,
        "result_extended": True,
        # Results are deleted by tasks.delete_old_data, not by celery.backend_cleanup.
        "result_expires": None,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_scheduler": "beat.scheduler:Scheduler",
        "beat_dburi": sqlalchemy_url(database_url),
        "beat_max_loop_interval": 5,
    }
