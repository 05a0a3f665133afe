"""The entries pgjobs declares in code, and how they reach the database.

They are inserted by name when missing and never overwritten: an entry an operator paused
stays paused, an edited time stays edited, a removed one comes back at the next start.
Celery's ``beat_schedule`` setting is not read: declare pgjobs' entries here.
"""

from __future__ import annotations

from beat import store
from beat.specs import CronSpec, EntrySpec
from config.settings import get_settings
from config.urls import sqlalchemy_url


def default_entries() -> list[EntrySpec]:
    """pgjobs' own recurring work, read in ``settings.TIMEZONE``."""
    zone = get_settings().timezone
    return [
        EntrySpec(
            name="delete_old_data",
            task="tasks.delete_old_data",
            schedule=CronSpec("0", "4", "*", "*", "*", timezone=zone),
            description="Nightly clean-up of old task results and sent-email log rows.",
        ),
    ]


def sync_default_entries(database_url: str) -> None:
    """Insert the default entries missing from the database at ``database_url``."""
    engine = store.create_engine(sqlalchemy_url(database_url))
    try:
        with store.transaction(engine) as session:
            store.add_entries(session, default_entries(), only_missing=True)
    finally:
        engine.dispose()
