"""pgjobs broker: a kombu transport keeping messages in PostgreSQL.

Select it in Celery with ``broker_transport = "broker.transport:Transport"`` and a
``postgresql://`` ``broker_url``; see :mod:`broker.transport` for its options.
"""

from broker.context import in_transaction

__all__ = ["in_transaction"]
