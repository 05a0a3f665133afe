"""Whether the broker is pgjobs' transport on the backend's own database.

Then a chord's callback can be published in the transaction that completes the chord, and
a result can be committed without waiting for its WAL flush: the acknowledgement of the
task's message, committed synchronously on the same server after it, flushes it too.
"""

from __future__ import annotations

from typing import Any

import psycopg
from kombu.transport import resolve_transport
from psycopg.conninfo import conninfo_to_dict

_TARGET = ("host", "port", "dbname", "user")


def broker_shares_database(app: Any, conninfo: str) -> bool:
    """Whether ``app``'s broker is :class:`broker.transport.Transport` on ``conninfo``."""
    from broker.transport import Transport

    conf = app.conf
    url = conf.broker_write_url or conf.broker_url
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
