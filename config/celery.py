"""The Celery application: ``celery -A config worker`` and ``celery -A config beat``.

Importing this module with a missing or malformed setting exits with one line
that names the variable.
"""

from __future__ import annotations

from celery import Celery, signals

import broker  # noqa: F401 - registers the postgresql:// transport alias with kombu
from config.celeryconfig import celery_config
from config.checks import check_broker_schema, check_serving
from config.settings import SettingsError, get_settings


def create_app() -> Celery:
    """Build the pgjobs Celery app from the process settings."""
    celery_app = Celery("pgjobs", include=["tasks"], control="config.revokes:Control")
    celery_app.conf.update(celery_config(get_settings()))
    # Operations: durable revokes, and `inspect scheduled` reading PostgreSQL.
    from config.ops.inspect import install as install_ops
    install_ops(celery_app)
    return celery_app


try:
    app = create_app()
except SettingsError as error:
    raise SystemExit(f"pgjobs: {error}") from None


# Sent by both `celery worker` and `celery beat` as they import task modules, before
# either touches the broker or the schedule. A SystemExit here ends the process with its one
# line; later, once consuming, a lost database is an outage that kombu retries.
@signals.import_modules.connect
def _refuse_to_start_without_database(**_: object) -> None:
    try:
        check_serving(get_settings())
        check_broker_schema(get_settings())
    except SettingsError as error:
        raise SystemExit(f"pgjobs: {error}") from None


# A pool child stores results, and publishes (retries, tasks sent by tasks), on the tasks' own
# pooled connection instead of opening connections of its own: one connection per child for
# all of it (see the README's connection budget). The broker borrows it only where BROKER_URL
# is DATABASE_URL (the default): broker.lending matches by connection parameters.
@signals.worker_process_init.connect
def _share_the_tasks_pool_with_results(**_: object) -> None:
    from broker.results.connection import lend_connections
    from tasks.db import lend

    lend_connections(get_settings().require_database_url(), lend)
