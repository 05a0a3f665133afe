"""The consumer heartbeat: one background thread per consumer.

Every ``interval`` seconds it renews the consumer's row (one statement, however many messages
the consumer holds: that row is the lease of all of them). The same statement says when the
first other consumer's heartbeat expires, and when the first unused ``x-expires`` queue does;
the thread wakes up then, not before, to rescue the messages of that consumer (or delete that
queue). While every consumer lives, a heartbeat is the only statement it sends. It has its
own connection, so a task running in the consuming thread (solo pool, long ETA wait) never
lets the leases lapse.

It also tells its consumer when the leases may be gone (:meth:`Heartbeat.expired`): the last
renewal is nearly ``visibility_timeout`` old (the process was paused, or PostgreSQL was out of
reach), or the consumer's row had been rescued away. A consumer must then stop handing out what
it prefetched, since another consumer may run those messages by now.
"""

from __future__ import annotations

import logging
import threading
import uuid
from time import monotonic

import psycopg

from broker.store import Beat, Store, first_line

logger = logging.getLogger(__name__)

# Wake this long after a heartbeat is due to expire: the rescue compares strictly.
SLACK = 0.01


def _rescue_due(beat: Beat) -> bool:
    """Whether a consumer's heartbeat, or an unused queue, has expired."""
    return any(due is not None and due <= 0
               for due in (beat.consumer_expires_in, beat.queue_expires_in))


class Heartbeat:
    """Renews one consumer's leases and rescues dead consumers' messages, in a thread."""

    def __init__(self, store: Store, consumer: uuid.UUID, hostname: str,
                 visibility_timeout: float, interval: float) -> None:
        self.store = store
        self.consumer = consumer
        self.hostname = hostname
        self.visibility_timeout = visibility_timeout
        self.interval = interval
        self.renewed_at = monotonic()
        self.lapsed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        """Start beating in a thread of its own; once."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="pgjobs-broker-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 5)
        self.store.close()

    def expired(self) -> bool:
        """True when this consumer's leases may have been handed to others: its row was
        rescued, or the last renewal is older than ``visibility_timeout`` less one interval
        (rescuers act at ``visibility_timeout``; the margin covers this check's own delay)."""
        return self.lapsed or (
            monotonic() - self.renewed_at > self.visibility_timeout - self.interval)

    def renewed(self, started: float) -> None:
        """Record a renewal sent at ``started`` (monotonic) that found the row in place."""
        self.renewed_at = max(self.renewed_at, started)

    def _run(self) -> None:
        # Beat at once: a connection the heartbeat cannot make should show at start.
        while not self._stop.wait(self.beat()):
            pass

    def beat(self) -> float:
        """Renew, and rescue if something expired; returns the seconds until the next beat
        (earlier than ``interval`` when a rescue falls due before). A failure is logged once
        per outage and retried after ``interval``."""
        started = monotonic()
        try:
            beat = self.store.beat(self.consumer, self.hostname, self.visibility_timeout)
            rescued = _rescue_due(beat)
            if rescued:
                self.store.rescue()
        except psycopg.Error as exc:
            self._on_error(exc)
            return self.interval
        self._renewed(started, beat.lapsed)
        return self._next_beat(beat, rescued)

    def _next_beat(self, beat: Beat, rescued: bool) -> float:
        """Seconds to the next beat: ``interval``, or just after the next expiry. Right after
        a rescue, not sooner than a second (or ``interval``): one that another consumer is
        still carrying out must not make this thread spin."""
        delay = self.interval
        for due in (beat.consumer_expires_in, beat.queue_expires_in):
            if due is not None:
                delay = min(delay, max(due, 0.0) + SLACK)
        return max(delay, min(self.interval, 1.0)) if rescued else delay

    def _renewed(self, started: float, lapsed: bool) -> None:
        if lapsed:
            self.lapsed = True
            logger.warning("pgjobs broker: this consumer's heartbeat lapsed beyond "
                           "visibility_timeout and its messages were handed back; it drops "
                           "what it prefetched and reconnects")
        self.renewed(started)
        if self._failing:
            logger.warning("pgjobs broker: heartbeat restored")
            self._failing = False

    def _on_error(self, exc: psycopg.Error) -> None:
        self.store.close()
        if not self._failing:
            logger.warning("pgjobs broker: heartbeat failed (%s); retrying every %.1fs",
                           first_line(exc), self.interval)
            self._failing = True
