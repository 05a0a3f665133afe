"""The consumer heartbeat: one background thread per consuming connection.

Every ``interval`` seconds it renews the consumer's row (one UPDATE, however many messages the
consumer holds: that row is the lease of all of them) and rescues the messages of consumers
whose heartbeat is older than their visibility timeout, and lets due ETA messages into
their queues. It has its own connection, so a task
running in the consuming thread (solo pool, long ETA wait) never lets the leases lapse.
"""

from __future__ import annotations

import logging
import threading
import uuid

import psycopg

from broker.store import Store, first_line

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews one consumer's leases and rescues dead consumers' messages, in a thread."""

    def __init__(self, store: Store, consumer: uuid.UUID, hostname: str,
                 visibility_timeout: float, interval: float) -> None:
        self.store = store
        self.consumer = consumer
        self.hostname = hostname
        self.visibility_timeout = visibility_timeout
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pgjobs-broker-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 5)
        self.store.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """Renew, then rescue; a failure is logged once per outage and retried next time."""
        try:
            lapsed = self.store.beat(self.consumer, self.hostname, self.visibility_timeout)
            self.store.rescue()
            self.store.promote()
        except psycopg.Error as exc:
            self._on_error(exc)
            return
        if lapsed:
            logger.warning("pgjobs broker: this consumer's heartbeat lapsed beyond "
                           "visibility_timeout; messages it held may be redelivered")
        if self._failing:
            logger.warning("pgjobs broker: heartbeat restored")
            self._failing = False

    def _on_error(self, exc: psycopg.Error) -> None:
        self.store.close()
        if not self._failing:
            logger.warning("pgjobs broker: heartbeat failed (%s); retrying every %.1fs",
                           first_line(exc), self.interval)
            self._failing = True
