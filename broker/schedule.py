"""When a consumer acts without being notified, and nothing else.

A waiting consumer is woken by notifications (:mod:`broker.listener`); the database is asked
only at three kinds of moments, each timed here:

- **promotion**: when the first delayed (ETA) message falls due. Each promotion says when
  the next one will, and a notification says so when an earlier one is published;
- **safety net**: every ``safety_interval`` seconds while the LISTEN connection is up, one
  query on it that proves it alive and finds work no notification announced;
- **polling**: every ``polling_interval`` seconds while the LISTEN connection is down, a claim
  on every channel and a promotion, since notifications are lost then.
"""

from __future__ import annotations

from time import monotonic


class Schedule:
    """The next moment of each kind (monotonic clock)."""

    def __init__(self, polling_interval: float, safety_interval: float) -> None:
        self.polling_interval = polling_interval
        self.safety_interval = safety_interval
        self.promote_at: float | None = None
        self.probe_at = monotonic() + safety_interval
        self.poll_at = monotonic()

    def next_at(self, listening: bool) -> float:
        """The next moment anything is due."""
        moments = [self.probe_at if listening else self.poll_at]
        if self.promote_at is not None:
            moments.append(self.promote_at)
        return min(moments)

    def promote_in(self, seconds: float | None) -> None:
        """What a promotion or the safety net found: the first delayed message falls due in
        ``seconds`` (None: none is delayed). It replaces what was known."""
        self.promote_at = None if seconds is None else monotonic() + max(0.0, seconds)

    def promote_by(self, due_at: float | None) -> None:
        """A delayed message falls due at ``due_at`` (monotonic; None: nothing new): promote
        then, unless a promotion comes earlier anyway."""
        if due_at is not None and (self.promote_at is None or due_at < self.promote_at):
            self.promote_at = due_at

    def promotion_due(self, now: float) -> bool:
        return self.promote_at is not None and now >= self.promote_at

    def probe_due(self, now: float) -> bool:
        return now >= self.probe_at

    def probed(self, now: float) -> None:
        self.probe_at = now + self.safety_interval

    def poll_due(self, now: float) -> bool:
        return now >= self.poll_at

    def polled(self, now: float) -> None:
        self.poll_at = now + self.polling_interval
