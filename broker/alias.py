"""Register the transport under its URL schemes, so kombu finds it by scheme.

Celery resolves the transport from ``broker_url`` alone in some places (``inspect report``,
``inspect conf``, a bare ``kombu.Connection(url)``), without the ``broker_transport``
setting; without an alias those answer ``KeyError('No such transport: postgresql')``.
An alias already registered by someone else is left as it is.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

TRANSPORT = "broker.transport:Transport"
SCHEMES = ("postgresql", "postgres")

for _scheme in SCHEMES:
    TRANSPORT_ALIASES.setdefault(_scheme, TRANSPORT)
