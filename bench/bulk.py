"""Benchmark bulk enqueue: ``broker.enqueue_many`` against ``delay()`` loops, in one run.

Run from the repository root::

    .venv/bin/python -m bench.bulk                       # 100,000 tasks each way
    .venv/bin/python -m bench.bulk --tasks 20000 --json bulk.json

Three ways of enqueueing ``--tasks`` no-op tasks from this process, no worker running, one
after the other on the same machine:

1. Redis: a ``delay()`` loop (Celery's Redis transport, the ``bench`` extra);
2. pgjobs: a ``delay()`` loop;
3. pgjobs: ``broker.enqueue_many`` of as many signatures, built inside the timing.

Each rate is tasks per second, from the first call to the last message committed; a first,
untimed call warms each one up. The PostgreSQL broker uses a fresh database created on
``--server-url`` and dropped at the end; the Redis keys carry a per-run prefix and are
deleted at the end. Targets: ``enqueue_many`` at least 10,000 tasks/s, and at least 4x the
Redis ``delay()`` loop.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import click
from celery import Celery

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.app import NOOP, build_app  # noqa: E402
from bench.database import bench_database, delete_redis_keys, redis_reachable  # noqa: E402
from broker import enqueue_many  # noqa: E402
from broker.urls import redact  # noqa: E402

MIN_RATE = 10_000
MIN_RATIO = 4.0


def delay_loop(app: Celery, count: int) -> float:
    """Tasks per second of ``count`` ``delay()`` calls."""
    task = app.tasks[NOOP]
    task.delay()
    started = time.perf_counter()
    for _ in range(count):
        task.delay()
    return count / (time.perf_counter() - started)


def bulk(app: Celery, count: int) -> float:
    """Tasks per second of one ``enqueue_many`` of ``count`` signatures, built in the timing."""
    task = app.tasks[NOOP]
    enqueue_many([task.s()])
    started = time.perf_counter()
    enqueue_many([task.s() for _ in range(count)])
    return count / (time.perf_counter() - started)


def measure(app: Celery, *ways: Callable[[Celery, int], float], count: int) -> list[float]:
    """Each way's rate, one after the other, on one app (kombu's producer pools are global
    per broker URL: once closed, they are closed for every app of the process)."""
    try:
        return [way(app, count) for way in ways]
    finally:
        app.pool.force_close_all()  # Celery's close() forgets its pools without closing them
        app.close()


def stored(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pgjobs_broker_message").fetchone()[0]


def report(figures: dict[str, float]) -> str:
    redis = figures["redis_delay"]
    lines = [f"{'way':<28} {'tasks/s':>10} {'vs Redis delay()':>18}"]
    for name, label in (("redis_delay", "Redis delay() loop"),
                        ("pgjobs_delay", "pgjobs delay() loop"),
                        ("pgjobs_enqueue_many", "pgjobs enqueue_many")):
        lines.append(f"{label:<28} {figures[name]:>10.0f} {figures[name] / redis:>17.2f}x")
    rate, ratio = figures["pgjobs_enqueue_many"], figures["pgjobs_enqueue_many"] / redis
    lines.append(f"target enqueue_many >= {MIN_RATE}/s: {rate:.0f}/s "
                 f"{'met' if rate >= MIN_RATE else 'NOT met'}")
    lines.append(f"target enqueue_many >= {MIN_RATIO:g}x Redis delay(): {ratio:.2f}x "
                 f"{'met' if ratio >= MIN_RATIO else 'NOT met'}")
    return "\n".join(lines)


@click.command()
@click.option("--tasks", default=100_000, show_default=True,
              type=click.IntRange(1, 10_000_000), help="Tasks enqueued by each way.")
@click.option("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
              show_default=True, help="PostgreSQL server on which the bench database is made.")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the figures to this file, as JSON.")
def main(tasks: int, server_url: str, redis_url: str, json_path: Path | None) -> None:
    """Measure enqueue_many against delay() loops on Redis and pgjobs; print a table."""
    if not redis_reachable(redis_url):
        raise click.ClickException(f"cannot reach Redis at {redact(redis_url)}; start it "
                                   "or set --redis-url")
    run_id = uuid.uuid4().hex[:10]
    prefix, queue = f"pgjobs-bench-{run_id}:", f"bench-{run_id}"
    click.echo(f"bench: {tasks} tasks each way, {os.cpu_count()} CPUs")
    with bench_database(server_url, run_id) as database_url:
        def app(broker: str) -> Celery:
            return build_app(broker, database_url, redis_url, prefix, queue)

        try:
            (redis,) = measure(app("redis"), delay_loop, count=tasks)
        finally:
            delete_redis_keys(redis_url, prefix)
        looped, bulked = measure(app("pgjobs"), delay_loop, bulk, count=tasks)
        figures = {"redis_delay": redis, "pgjobs_delay": looped, "pgjobs_enqueue_many": bulked}
        expected = 2 * (tasks + 1)  # each way of pgjobs, and its warm-up
        if stored(database_url) != expected:
            raise click.ClickException(f"{stored(database_url)} messages stored, "
                                       f"{expected} expected")
    click.echo(report(figures))
    if json_path is not None:
        json_path.write_text(json.dumps({"tasks": tasks, "cpus": os.cpu_count(),
                                         "rates": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
