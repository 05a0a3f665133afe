"""pgjobs broker: a kombu transport keeping messages in PostgreSQL.

Select it in Celery with ``broker_transport = "broker.transport:Transport"`` and a
``postgresql://`` ``broker_url``; see :mod:`broker.transport` for its options.
Importing this package also registers the transport under the URL schemes
``postgresql`` and ``postgres`` (:mod:`broker.alias`).
"""

from typing import Any

from broker import alias
from broker.context import in_transaction

__all__ = ["alias", "enqueue_many", "in_transaction"]


def enqueue_many(signatures: Any, **options: Any) -> list[Any]:
    """Send many Celery task signatures in one transaction: see :func:`broker.bulk.enqueue_many`
    (imported here on first use, since it needs Celery and the rest of the broker does not)."""
    from broker.bulk import enqueue_many as send

    return send(signatures, **options)
