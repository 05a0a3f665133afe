"""Task outcomes and run times for ``pgjobs metrics``, from Celery's task events.

The metrics process consumes the workers' events (as Flower does) and asks the workers to
send them (``enable_events``, every ``ENABLE_EVENTS_SECONDS``, so a worker started later
sends them too). Counters start at zero with the metrics process, as Prometheus counters
may; ``rate()`` and ``histogram_quantile()`` handle the reset.

- ``pgjobs_task_events_total{task, event}``: ``succeeded``, ``failed``, ``retried``,
  ``rejected`` and ``revoked`` events seen.
- ``pgjobs_task_runtime_seconds{task}``: a histogram of the run time of succeeded tasks,
  as the worker measured it.

The task name comes from the ``task-received`` event; a task received before the metrics
process started is counted under ``task="unknown"``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry, Counter, Histogram

from config.errors import one_line

logger = logging.getLogger(__name__)

ENABLE_EVENTS_SECONDS = 30.0
OUTCOMES = ("succeeded", "failed", "retried", "rejected", "revoked")
BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class TaskEvents:
    """Counts task events into ``registry``; :meth:`start` runs the receiver in a thread."""

    def __init__(self, app: Celery, registry: CollectorRegistry) -> None:
        self.app = app
        self.state = app.events.State(max_tasks_in_memory=10000)
        self.outcomes = Counter("pgjobs_task_events", "Task events seen, by task and outcome",
                                ["task", "event"], registry=registry)
        self.runtime = Histogram("pgjobs_task_runtime_seconds",
                                 "Run time of succeeded tasks, as the worker measured it",
                                 ["task"], registry=registry, buckets=BUCKETS)

    def on_event(self, event: dict[str, Any]) -> None:
        self.state.event(event)
        kind = str(event.get("type", ""))
        outcome = kind.removeprefix("task-")
        if outcome not in OUTCOMES:
            return
        task = self.state.tasks.get(event.get("uuid"))
        name = (task.name if task is not None else None) or "unknown"
        self.outcomes.labels(name, outcome).inc()
        if outcome == "succeeded" and isinstance(event.get("runtime"), int | float):
            self.runtime.labels(name).observe(event["runtime"])

    def start(self) -> None:
        threading.Thread(target=self._receive, name="pgjobs-task-events", daemon=True).start()
        threading.Thread(target=self._enable, name="pgjobs-enable-events", daemon=True).start()

    def _receive(self) -> None:
        """Consume events for ever; reconnect after a failure."""
        while True:
            try:
                with self.app.connection_for_read() as connection:
                    receiver = self.app.events.Receiver(connection,
                                                        handlers={"*": self.on_event})
                    receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as error:  # keep serving the database metrics meanwhile
                logger.warning("pgjobs metrics: task events interrupted (%s); reconnecting",
                               one_line(error))
                time.sleep(1)

    def _enable(self) -> None:
        while True:
            try:
                self.app.control.enable_events()
            except Exception as error:
                logger.warning("pgjobs metrics: could not enable task events (%s)",
                               one_line(error))
            time.sleep(ENABLE_EVENTS_SECONDS)
