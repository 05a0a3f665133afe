"""Surviving a lost database connection on the consuming side.

A consumer does not hand a lost connection to kombu as an error: Celery's answer would be to
tear the consumer down and drop every message it had prefetched, some of which its pool may
already be running. Instead, the claim that failed returns nothing, the outcomes that could
not be recorded wait for the connection to come back, and the next claim, after a short
backoff, reconnects. One warning when the connection is lost, one when it is back. The
consumer's row, and so every lease, lives in the database all along; if the outage lasts
long enough for the leases to lapse, the heartbeat says so and the transport does raise
(:class:`broker.consumer.LeaseExpired`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic

from broker.store import CONNECTION_ERRORS, first_line

logger = logging.getLogger(__name__)

MAX_BACKOFF = 5.0


class Outage:
    """Whether the consuming connection is usable now; logs and paces the reconnects."""

    def __init__(self) -> None:
        self.failing = False
        self._backoff = 0.0
        self._retry_at = 0.0

    def ready(self) -> bool:
        """False while waiting out the backoff after a failure."""
        return monotonic() >= self._retry_at

    @contextmanager
    def survive(self) -> Iterator[None]:
        """Run the block; a lost connection ends it quietly, to be retried after the
        backoff."""
        try:
            yield
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
        else:
            self._over()

    def _lost(self, exc: BaseException) -> None:
        if not self.failing:
            logger.warning("pgjobs broker: lost the database connection (%s); keeping every "
                           "lease and retrying", first_line(exc))
            self.failing = True
        self._backoff = min(MAX_BACKOFF, max(0.1, self._backoff * 2))
        self._retry_at = monotonic() + self._backoff

    def _over(self) -> None:
        if self.failing:
            logger.warning("pgjobs broker: database connection restored")
            self.failing = False
        self._backoff = 0.0
