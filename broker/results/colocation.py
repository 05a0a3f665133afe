"""Whether the broker is pgjobs' transport on the backend's own database.

Celery publishes through ``broker_write_url`` and its workers consume through
``broker_read_url`` (each ``broker_url`` when unset), so the two sides are asked apart. When
publishing shares the database, a chord's callback is published in the transaction that
completes the chord. When consuming does, the acknowledgement of a task's message is
committed on the backend's server after the task's result: the result can then travel with
it, or be committed without waiting for its WAL flush, which the acknowledgement's flushes
too.
"""

from __future__ import annotations

from typing import Any

import psycopg
from kombu.transport import resolve_transport
from psycopg.conninfo import conninfo_to_dict

_TARGET = ("host", "port", "dbname", "user")


def broker_shares_database(app: Any, conninfo: str, consuming: bool = False) -> bool:
    """Whether ``app``'s broker is :class:`broker.transport.Transport` on ``conninfo``, for
    publishing, or with ``consuming``, for the workers' consuming (and acknowledging)."""
    from broker.transport import Transport

    conf = app.conf
    url = (conf.broker_read_url if consuming else conf.broker_write_url) or conf.broker_url
    if not isinstance(url, str) or ";" in url:
        return False  # failover lists: which one is current is the transport's business
    try:
        cls = resolve_transport(conf.broker_transport or url.partition("://")[0])
    except (ImportError, AttributeError, KeyError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, Transport) and _same_target(url, conninfo)


def _same_target(first: str, second: str) -> bool:
    try:
        a, b = conninfo_to_dict(first), conninfo_to_dict(second)
    except psycopg.ProgrammingError:
        return False
    return all(a.get(key) == b.get(key) for key in _TARGET)
