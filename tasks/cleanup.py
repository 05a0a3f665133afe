"""The ``tasks.delete_old_data`` task: the nightly retention run."""

from __future__ import annotations

from celery import Task
from psycopg import OperationalError as DriverOperationalError
from sqlalchemy.exc import OperationalError

from config.celery import app
from config.settings import SettingsError, get_settings
from tasks.db import engine
from tasks.errors import RetentionConfigError
from tasks.retention import apply_rules, rules_from

# A database that is down or restarting gets three more tries: after up to 30 s, 60 s
# and 120 s (full jitter). A bad rule is not retried: it will not fix itself.
MAX_RETRIES = 3
RETRY_BACKOFF_SECONDS = 30
RETRY_BACKOFF_MAX_SECONDS = 300


@app.task(
    bind=True,
    name="tasks.delete_old_data",
    autoretry_for=(OperationalError, DriverOperationalError),
    retry_backoff=RETRY_BACKOFF_SECONDS,
    retry_backoff_max=RETRY_BACKOFF_MAX_SECONDS,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
    throws=(RetentionConfigError, SettingsError, ValueError),
)
def delete_old_data(self: Task, dry_run: bool = False) -> dict[str, int]:
    """Delete rows older than their retention; ``{table: rows}`` (would-be rows if dry run).

    Every rule is checked before anything is deleted; a bad rule raises
    RetentionConfigError naming it, with nothing deleted.
    """
    if not isinstance(dry_run, bool):
        raise ValueError(f"dry_run must be true or false, not {dry_run!r}")
    settings = get_settings()
    rules = rules_from(settings)
    return apply_rules(engine(), rules, settings.retention_batch_size, dry_run)
