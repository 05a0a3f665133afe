"""Benchmark what waking consumers costs publishers: autocommit publishes with and without
``NOTIFY``, from 1, 8 and 32 producers at once.

Run from the repository root::

    .venv/bin/python -m bench.notify                          # 1, 8 and 32 producers, 5 s each
    .venv/bin/python -m bench.notify --producers 1,8 --seconds 3 --json notify.json

PostgreSQL serialises the commits of every transaction that sent a ``NOTIFY``, server-wide.
Each producer is a process of its own with one broker session, publishing one small Celery
task message per transaction (``Store.publish``, as ``delay()`` does) for ``--seconds``,
all producers at once. Two queues:

- ``busy``: its consumer holds a full prefetch window and a backlog waits behind it, so no
  publish needs to wake anybody;
- ``idle``: its consumer waits for work (it LISTENs and claims nothing), so every publish
  must wake it.

Each is measured twice, one after the other: through the broker, and as the reference, the
same row inserted by a plain ``INSERT`` without any ``NOTIFY``. The ratio broker/reference
is the share of the reference rate the broker keeps; each is the median of ``--rounds``
alternations. Each consumer's LISTEN connection is read throughout; the wake-ups it heard
(reads that returned a notification) are shown. The bench uses a fresh database created on
``--server-url`` and dropped at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import psycopg

if not __package__:  # run as a script: make `bench` and `broker` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.database import bench_database  # noqa: E402
from broker.store import Store, row  # noqa: E402

# The reference: the broker's row, inserted without routing and without waking anyone.
REFERENCE_INSERT = ("INSERT INTO pgjobs_broker_message (queue, priority, visible_at, payload) "
                    "VALUES (%(queue)s, %(priority)s, statement_timestamp(), %(payload)s)")
BUSY_WINDOW = 10  # messages the busy queue's consumer holds
SCENARIOS = ("busy", "idle")


def task_message(queue: str) -> dict[str, Any]:
    """A Celery task message as kombu hands it to the transport (about 700 bytes)."""
    task_id = str(uuid.uuid4())
    return {
        "body": "W1tdLCB7fSwgeyJjYWxsYmFja3MiOiBudWxsLCAiZXJyYmFja3MiOiBudWxsfV0=",
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "bench.noop", "id": task_id, "shadow": None,
                    "eta": None, "expires": None, "group": None, "group_index": None,
                    "retries": 0, "timelimit": [None, None], "root_id": task_id,
                    "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}",
                    "origin": "gen1@bench", "ignore_result": True},
        "properties": {"correlation_id": task_id, "reply_to": str(uuid.uuid4()),
                       "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": queue},
                       "delivery_tag": str(uuid.uuid4())},
    }


def _broker_publisher(database_url: str, queue: str) -> Callable[[], None]:
    store = Store(database_url)
    message = task_message(queue)
    return lambda: store.publish("", queue, message, 2.0)


def _reference_publisher(database_url: str, queue: str) -> Callable[[], None]:
    conn = psycopg.connect(database_url, autocommit=True, prepare_threshold=None)
    message = task_message(queue)

    def publish() -> None:
        stored = row("", queue, message, 2.0)  # the same encoding work as the broker's
        conn.execute(REFERENCE_INSERT, {"queue": queue, "priority": stored.priority,
                                        "payload": stored.payload})

    return publish


PUBLISHERS = {"broker": _broker_publisher, "reference": _reference_publisher}


def _produce(database_url: str, queue: str, inbox: Any, counts: Any) -> None:
    """One producer process: for each ``(way, start, seconds)`` it is sent, publish that way
    as fast as it can from wall-clock time ``start`` for ``seconds``, and report how many."""
    publishers = {way: make(database_url, queue) for way, make in PUBLISHERS.items()}
    for publish in publishers.values():
        publish()  # connect and warm up outside the timing
    counts.put(0)
    while (command := inbox.get()) is not None:
        way, start, seconds = command
        publish = publishers[way]
        time.sleep(max(0.0, start - time.time()))
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            publish()
            done += 1
        counts.put(done)


class Producers:
    """Producer processes for one queue, started once and told what to do in turn."""

    def __init__(self, database_url: str, queue: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.counts = context.Queue()
        self.inboxes = [context.Queue() for _ in range(count)]
        self.processes = [context.Process(target=_produce,
                                          args=(database_url, queue, inbox, self.counts))
                          for inbox in self.inboxes]
        for process in self.processes:
            process.start()
        for _ in self.processes:
            self.counts.get(timeout=120)  # every producer connected

    def rate(self, way: str, producers: int, seconds: float) -> float:
        """Messages per second of ``producers`` of them publishing at once, ``way``."""
        start = time.time() + 0.2
        for inbox in self.inboxes[:producers]:
            inbox.put((way, start, seconds))
        total = sum(self.counts.get(timeout=seconds + 120) for _ in range(producers))
        return total / seconds

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for process in self.processes:
            process.join(timeout=30)


class Ears:
    """Reads a consumer's LISTEN connection in a thread and counts what it hears."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.heard = 0  # reads that returned at least one notification
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heard += bool(self.listener.wait(0.2))

    def take(self) -> int:
        """Wake-ups heard since the last call."""
        time.sleep(0.3)  # the last ones in flight
        heard, self.heard = self.heard, 0
        return heard

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def consumer(database_url: str, queue: str, busy: bool) -> Iterator[Ears]:
    """A consumer of ``queue`` that never acknowledges: holding a full prefetch window with a
    backlog behind it (``busy``), or waiting for work."""
    from kombu import Connection, Consumer, Queue

    conn = Connection(database_url, transport="broker.transport:Transport")
    try:
        channel = conn.default_channel
        Queue(queue)(channel).declare()
        if busy:
            for _ in range(2 * BUSY_WINDOW):
                conn.transport.store.publish("", queue, task_message(queue), 2.0)
        held: list[Any] = []
        with Consumer(conn, [Queue(queue)], callbacks=[lambda body, m: held.append(m)],
                      prefetch_count=BUSY_WINDOW):
            if busy:
                conn.drain_events(timeout=10)
                assert len(held) == BUSY_WINDOW, f"the busy consumer holds {len(held)} messages"
            ears = Ears(conn.transport.listener)
            try:
                yield ears
            finally:
                ears.stop()
    finally:
        conn.release()


@dataclass
class Figure:
    scenario: str
    producers: int
    broker: float
    reference: float
    heard: int

    @property
    def ratio(self) -> float:
        return self.broker / self.reference


def measure(database_url: str, run_id: str, producers: list[int], seconds: float,
            rounds: int) -> list[Figure]:
    """Each scenario and producer count: ``rounds`` alternations of reference and broker, the
    median of each (the machine's other load comes and goes)."""
    figures = []
    for scenario in SCENARIOS:
        queue = f"notify-{scenario}-{run_id}"
        with consumer(database_url, queue, busy=scenario == "busy") as ears:
            pool = Producers(database_url, queue, max(producers))
            try:
                for count in producers:
                    click.echo(f"  {scenario}, {count} producer(s) ...", err=True)
                    reference, broker, heard = [], [], 0
                    for _ in range(rounds):
                        reference.append(pool.rate("reference", count, seconds))
                        ears.take()
                        broker.append(pool.rate("broker", count, seconds))
                        heard += ears.take()
                    figures.append(Figure(scenario, count, statistics.median(broker),
                                          statistics.median(reference), heard))
            finally:
                pool.close()
    return figures


def report(figures: list[Figure]) -> str:
    lines = [f"{'queue':<6} {'producers':>9} {'broker/s':>10} {'no NOTIFY/s':>12} "
             f"{'ratio':>7} {'wake-ups':>9}"]
    for f in figures:
        lines.append(f"{f.scenario:<6} {f.producers:>9} {f.broker:>10.0f} {f.reference:>12.0f} "
                     f"{f.ratio:>6.2f}x {f.heard:>9}")
    return "\n".join(lines)


def _producer_counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= count <= 64 for count in counts):
        raise click.BadParameter(f"must be a comma-separated list of numbers from 1 to 64, "
                                 f"got {value!r}")
    return counts


@click.command()
@click.option("--producers", default="1,8,32", show_default=True,
              help="Comma-separated producer counts, each measured in turn.")
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(0.5, 600),
              help="Seconds each measurement publishes for.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Measurements of each way per cell; the median is shown.")
@click.option("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
              show_default=True, help="PostgreSQL server on which the bench database is made.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the figures to this file, as JSON.")
def main(producers: str, seconds: float, rounds: int, server_url: str,
         json_path: Path | None) -> None:
    """Measure the publish rate with and without NOTIFY, on a busy and an idle queue."""
    counts = _producer_counts(producers)
    run_id = uuid.uuid4().hex[:10]
    click.echo(f"bench: autocommit publishes, {rounds} x {seconds:g}s each way, "
               f"{os.cpu_count()} CPUs")
    with bench_database(server_url, run_id) as database_url:
        figures = measure(database_url, run_id, counts, seconds, rounds)
    click.echo(report(figures))
    if json_path is not None:
        rows = [{**asdict(f), "ratio": f.ratio} for f in figures]
        summary = {"seconds": seconds, "rounds": rounds, "cpus": os.cpu_count(),
                   "figures": rows}
        json_path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
