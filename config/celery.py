"""The Celery application: ``celery -A config worker`` and ``celery -A config beat``.

Importing this module with a missing or malformed setting exits with one line
that names the variable.
"""

from __future__ import annotations

from celery import Celery

from config.celeryconfig import celery_config
from config.settings import SettingsError, get_settings


def create_app() -> Celery:
    """Build the pgjobs Celery app from the process settings."""
    celery_app = Celery("pgjobs", include=["tasks"])
    celery_app.conf.update(celery_config(get_settings()))
    return celery_app


try:
    app = create_app()
except SettingsError as error:
    raise SystemExit(f"pgjobs: {error}") from None
