"""Celery configuration built from :class:`config.settings.Settings`.

The broker is chosen in :func:`broker_options` and nowhere else.
"""

from __future__ import annotations

from typing import Any

from broker.urls import remember_password, split_password
from config.settings import Settings
from config.urls import sqlalchemy_url


def broker_options(settings: Settings, direct: str | None) -> dict[str, Any]:
    """The broker: pgjobs' PostgreSQL transport (``broker/``) on BROKER_URL (by default the
    same database), or RabbitMQ when BROKER_URL is an ``amqp://`` URL; ``direct`` is
    :func:`direct_url`'s."""
    if not settings.broker_is_postgres:
        # kombu's AMQP transport takes the URL apart, and Celery shows its password nowhere.
        return {"broker_url": settings.require_broker_url(), "broker_password": None}
    # The password goes apart, where Celery hides it: it shows the transport's URL whole in
    # `inspect stats`, as that transport parses its URL itself.
    broker_url, password = split_password(settings.require_broker_url())
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout,
                               "prepared_statements": settings.prepared_statements}
    if direct and not settings.broker_url:
        options["direct_url"] = direct
    return {
        "broker_url": broker_url,
        "broker_password": password,
        "broker_transport": "broker.transport:Transport",
        "broker_transport_options": options,
    }


def direct_url(settings: Settings) -> str | None:
    """DATABASE_DIRECT_URL without its password, which is remembered for this process's
    LISTEN connections, results' LISTEN connection and beat's leader lock instead
    (:func:`broker.urls.remember_password`): Celery shows those URLs whole (``inspect stats``
    prints the transport options unfiltered; ``inspect conf`` and ``celery report`` mask no
    ``direct_url`` nor ``beat_lock_dburi``). Every process that connects builds its Celery
    configuration here, and a worker's pool children inherit the password by fork."""
    if not settings.database_direct_url:
        return None
    url, password = split_password(settings.database_direct_url)
    remember_password(url, password)
    return url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting pgjobs relies on, in one dict."""
    database_url = settings.require_database_url()
    direct = direct_url(settings)
    return {
        **broker_options(settings, direct),
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
        # Unset, the direct URLs default to the URLs above; set, they name no password (see
        # direct_url).
        "result_backend_transport_options": {
            "direct_url": direct,
            "prepared_statements": settings.prepared_statements,
        },
        "result_extended": True,
        # Results are deleted by tasks.delete_old_data, not by celery.backend_cleanup.
        "result_expires": None,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_scheduler": "beat.scheduler:Scheduler",
        "beat_dburi": sqlalchemy_url(database_url),
        "beat_lock_dburi": sqlalchemy_url(direct) if direct else None,
        "beat_max_loop_interval": 5,
    }
