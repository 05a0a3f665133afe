"""What a worker costs while it has nothing to run: queries per second, and memory with many
tasks due later. pgjobs and Redis side by side, in one run.

Run from the repository root::

    .venv/bin/python -m bench.idle                      # 60 s window, 100,000 ETA tasks
    .venv/bin/python -m bench.idle --window 10 --eta 2000

One worker per broker (``bench.run``'s: prefork ``-c 2``, prefetch multiplier 4), both
running at once, each on a fresh queue; one untimed probe each, then ``--settle`` seconds.

1. idle queries: over ``--window`` seconds, the pgjobs worker's transactions (commits and
   rollbacks in ``pg_stat_database`` of its private bench database, read from another
   database), and the Redis worker's commands (``MONITOR``, counting the worker's own
   connections only, as the Redis server is shared). Target: pgjobs at most 1 a second.
2. memory: the resident set of each worker's main process (the consumer; the pool's
   processes do not hold messages) while idle, then once ``--eta`` tasks due in an hour are
   queued and a probe sent after them has run (so a Redis worker has taken them all; it
   keeps ETA tasks in memory until they are due). Target: pgjobs at most 1.2x idle.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click
from sqlalchemy.engine import make_url

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cases  # noqa: E402
from bench.cases import BROKERS, Comparison, Size, Stage  # noqa: E402
from bench.run import Subject  # noqa: E402

TRANSACTIONS = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"
MAX_QUERIES, MAX_GROWTH = 1.0, 1.2
ETA_SECONDS = 3600
SIZES = (
    Size("--window", 60.0, "Seconds over which idle queries are counted."),
    Size("--settle", 10.0, "Seconds a worker idles after its first task, before counting.",
         low=0),
    Size("--eta", 100_000, "Tasks due in an hour queued for the memory case."),
)


def transactions(server_url: str, database: str) -> int:
    """Transactions ended so far in ``database``, read from a connection to another database,
    so that reading them adds none."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        return conn.execute(TRANSACTIONS, (database,)).fetchone()[0]


def worker_addresses(pid: int, port: int) -> set[tuple[str, str]]:
    """``(host, port)`` of every TCP connection the worker's processes hold to ``port``."""
    import psutil

    root = psutil.Process(pid)
    return {(c.laddr.ip, str(c.laddr.port))
            for process in [root, *root.children(recursive=True)]
            for c in process.net_connections(kind="tcp") if c.raddr and c.raddr.port == port}


def redis_commands(redis_url: str, pid: int, seconds: float) -> int:
    """Commands the worker ``pid`` sends Redis over ``seconds``, counted with ``MONITOR``."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=seconds + 10)
    port = client.connection_pool.connection_kwargs.get("port", 6379)
    ours, count = worker_addresses(pid, port), 0
    with client.monitor() as monitor:
        end = time.time() + seconds
        with contextlib.suppress(redis.TimeoutError):  # nothing at all: the window is over
            while (command := monitor.next_command())["time"] < end:
                count += (command["client_address"], command["client_port"]) in ours
    client.close()
    return count


def idle_queries(stage: Stage, workers: dict[str, int], seconds: float) -> Comparison:
    database = make_url(stage.plan.database_url).database
    before, started = transactions(stage.server_url, database), time.monotonic()
    commands = redis_commands(stage.plan.redis_url, workers["redis"], seconds)
    pgjobs = (transactions(stage.server_url, database) - before) / (time.monotonic() - started)
    result = Comparison("idle_queries", "Queries of an idle worker", "per second",
                        [f"idle, {seconds:.0f} s"],
                        {"pgjobs": [pgjobs], "redis": [commands / seconds]},
                        note="pgjobs: transactions on its database; Redis: commands")
    return (result.check("pgjobs", pgjobs, "<=", MAX_QUERIES, "/s")
            .check("pgjobs/Redis", result.versus()))


def resident_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def eta_memory(stage: Stage, subjects: dict[str, Subject], workers: dict[str, int],
               count: int) -> Comparison:
    idle = {broker: resident_mb(pid) for broker, pid in workers.items()}
    for broker, subject in subjects.items():
        cases.fill(stage, subject.plan, broker, count, countdown=ETA_SECONDS)
    for subject in subjects.values():  # behind every ETA task: Redis has fetched them all
        subject.probe(timeout=count / 50 + 120)
    time.sleep(2)
    figures: dict[str, list[float | None]] = {
        broker: [idle[broker], resident_mb(pid)] for broker, pid in workers.items()}
    left = {broker: cases.queued(subject.plan, broker) for broker, subject in subjects.items()}
    result = Comparison("eta_memory", f"Worker memory with {count:,} tasks due in an hour",
                        "MiB resident, main process", ["idle", f"{count:,} ETA tasks"],
                        figures, note="ETA tasks left in the broker, not in the worker: " +
                        ", ".join(f"{broker} {n:,}" for broker, n in left.items()))
    return (result.check("pgjobs ETA/idle", result.ratio("pgjobs"), "<=", MAX_GROWTH)
            .check("Redis ETA/idle", result.ratio("redis")))


def run(server_url: str, redis_url: str, window: float, settle: float,
        eta: int) -> list[Comparison]:
    with cases.stage(server_url, redis_url) as here, contextlib.ExitStack() as stack:
        subjects = {broker: Subject(here.variant(broker), broker, here.logdir)
                    for broker in BROKERS}
        workers = {}
        for broker, subject in subjects.items():
            stack.callback(subject.close)
            workers[broker] = stack.enter_context(subject.worker()).pid
        for subject in subjects.values():
            subject.producer = subject.connection.Producer()
            subject.warm_up()
        time.sleep(settle)
        results = [idle_queries(here, workers, window)]
        click.echo(results[-1].table())
        results.append(eta_memory(here, subjects, workers, eta))
        click.echo(results[-1].table())
    return results


@click.command()
@cases.cli(SIZES)
def main(server_url: str, redis_url: str, json_path: Path | None, **sizes: float) -> None:
    """Count an idle worker's queries, and weigh it with many ETA tasks; pgjobs and Redis."""
    cases.require_redis(redis_url)
    cases.stop_on_sigterm()
    click.echo(f"bench.idle: {sizes}")
    cases.report(run(server_url, redis_url, **sizes), json_path, sizes=sizes)


if __name__ == "__main__":
    main()
