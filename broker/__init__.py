"""pgjobs broker: a kombu transport keeping messages in PostgreSQL.

Select it in Celery with ``broker_transport = "broker.transport:Transport"`` and a
``postgresql://`` ``broker_url``; see :mod:`broker.transport` for its options.
Importing this package also registers the transport under the URL schemes
``postgresql`` and ``postgres`` (:mod:`broker.alias`).
"""

from broker import alias
from broker.context import in_transaction

__all__ = ["alias", "in_transaction"]
