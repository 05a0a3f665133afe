"""pgjobs' Celery result backend on PostgreSQL.

Select it with ``result_backend = "broker.results:PostgresBackend+postgresql://..."``; see
:mod:`broker.results.backend`. Tasks whose arguments are secrets derive from
:class:`broker.results.privacy.PrivateArgsTask`.
"""

from broker.results.backend import PostgresBackend
from broker.results.privacy import PrivateArgsTask

__all__ = ["PostgresBackend", "PrivateArgsTask"]
