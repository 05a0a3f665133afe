"""The pgjobs beat scheduler: sqlalchemy-celery-beat's database schedule."""

from sqlalchemy_celery_beat.schedulers import DatabaseScheduler


class Scheduler(DatabaseScheduler):
    """Reads the schedule from PostgreSQL."""
