"""Drain throughput of pgjobs' broker per Celery pool: solo and threads against prefork.

Run from the repository root::

    .venv/bin/python -m bench.pools                  # --tasks 2000 --rounds 3 --concurrency 2

Each pool drains ``--tasks`` no-op tasks queued before its worker starts (timed from the
first task's start to the last task's end; the median of ``--rounds``), and is compared with
prefork at the same concurrency: solo runs one task at a time, so it is compared with
``prefork -c 1``; threads with ``prefork -c --concurrency``.
"""

from __future__ import annotations

import os
import statistics
import sys
import uuid
from pathlib import Path

import click

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.app import NOOP  # noqa: E402
from bench.database import bench_database, delete_redis_keys  # noqa: E402
from bench.run import Plan, Reports, drain_rate, worker  # noqa: E402


def pool_drain(plan: Plan, broker: str, pool: str, concurrency: int, logdir: Path) -> float:
    """Median drain rate of ``pool`` at ``concurrency`` over ``plan.rounds`` rounds."""
    app, reports = plan.app(broker), Reports()
    connection = app.connection_for_write()
    producer = connection.Producer()
    rates = []
    try:
        for _ in range(plan.rounds):
            for _ in range(plan.tasks):
                app.tasks[NOOP].apply_async(producer=producer)
            with worker(plan, broker, reports, logdir / f"{broker}-{pool}-{concurrency}.log",
                        pool, concurrency):
                rates.append(drain_rate(reports, plan.tasks))
    finally:
        reports.close()
        connection.close()
        app.close()
    return statistics.median(rates)


@click.command()
@click.option("--tasks", default=2000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Concurrency of threads and of the prefork pool it is compared with.")
@click.option("--prefetch", default=4, show_default=True, type=click.IntRange(1, 1000))
@click.option("--brokers", default="pgjobs,redis", show_default=True,
              help="Brokers to measure; Redis shows what the pools cost Celery itself.")
@click.option("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
              show_default=True, help="PostgreSQL server on which the bench database is made.")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True)
def main(tasks: int, rounds: int, concurrency: int, prefetch: int, brokers: str,
         server_url: str, redis_url: str) -> None:
    """Print drain/s per pool, with the ratio to prefork at the same concurrency."""
    run_id = uuid.uuid4().hex[:10]
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgjobs-bench-pools-{run_id}"
    logdir.mkdir(parents=True)
    with bench_database(server_url, run_id) as database_url:
        plan = Plan(tasks=tasks, rounds=rounds, samples=0, concurrency=concurrency,
                    prefetch=prefetch, pause=0, latency_budget=0, database_url=database_url,
                    redis_url=redis_url, run_id=run_id)
        click.echo(f"bench.pools: {tasks} tasks x {rounds} rounds, prefetch x{prefetch}, "
                   f"{os.cpu_count()} CPUs")
        try:
            for broker in brokers.split(","):
                for pool, n in [("solo", 1), ("threads", concurrency)]:
                    baseline = pool_drain(plan, broker, "prefork", n, logdir)
                    rate = pool_drain(plan, broker, pool, n, logdir)
                    click.echo(f"{broker:<7} {pool:<8} -c {n}: {rate:6.0f} drain/s   "
                               f"prefork -c {n}: {baseline:6.0f} drain/s   "
                               f"ratio {rate / baseline:.2f}x")
        finally:
            if "redis" in brokers:
                delete_redis_keys(redis_url, plan.prefix)


if __name__ == "__main__":
    main()
