"""Benchmark pgjobs' broker against kombu's SQLAlchemy transport and Redis, side by side.

Run from the repository root::

    .venv/bin/python -m bench.run                     # all three, default sizes
    .venv/bin/python -m bench.run --tasks 500 --samples 50 --brokers pgjobs,redis

Every broker gets the same tasks and worker settings (prefork, ``-c 2``, prefetch multiplier
4, acks late, JSON, remote control off). Steps 1 and 2 run for one broker after the other;
step 3 for all of them at once. Redis needs the ``bench`` extra (``pip install -e .[bench]``).

1. enqueue rate: ``--tasks`` no-op tasks published from this process, worker stopped;
2. drain throughput: a worker starts and runs them all; the time from the first task's start
   to the last task's end (worker start-up is not counted), then the worker stops;
   steps 1 and 2 repeat ``--rounds`` times and the medians are shown;
3. publish-to-start latency on idle workers: one worker per broker, all running at once and
   probed in turn (random order each turn) so they share the machine's load; ``--samples``
   tasks per broker, sent one at a time, each carrying its publication time, with a random
   pause of up to ``--pause`` seconds after each; p50 and p99. A broker whose probes took
   ``--latency-budget`` seconds in all leaves the rotation (kombu's SQLAlchemy transport
   polls once a second);
4. for pgjobs, the enqueue rate of ``--tasks`` tasks inside one transaction of the caller's
   (``broker.in_transaction``), commit included.

PostgreSQL brokers use a fresh database created on ``--server-url`` and dropped at the end;
Redis keys carry a per-run prefix and are deleted at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from celery import Celery
from kombu import Producer

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.app import BROKERS, NOOP, PROBE, RABBITMQ_URL, build_app  # noqa: E402
from bench.database import (  # noqa: E402
    bench_database,
    delete_rabbitmq_queue,
    delete_redis_keys,
    rabbitmq_reachable,
    redis_reachable,
)
from broker.urls import redact  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CELERY = Path(sys.executable).with_name("celery")


@dataclass(frozen=True)
class Plan:
    """What to run; one per benchmark invocation."""

    tasks: int
    rounds: int
    samples: int
    concurrency: int
    prefetch: int
    pause: float
    latency_budget: float
    database_url: str
    redis_url: str
    run_id: str

    def app(self, broker: str) -> Celery:
        return build_app(broker, self.database_url, self.redis_url, self.prefix, self.queue)

    @property
    def prefix(self) -> str:
        return f"pgjobs-bench-{self.run_id}:"

    @property
    def queue(self) -> str:
        return f"bench-{self.run_id}"


@dataclass
class Result:
    broker: str
    enqueue_rate: float = math.nan
    drain_rate: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    samples: int = 0
    error: str = ""
    transactional_enqueue_rate: float = math.nan


class Reports:
    """The UDP socket tasks report to: ``kind a b`` per datagram."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.seen: Counter[str] = Counter()  # every report received, by kind

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def collect(self, kind: str, count: int, timeout: float) -> list[tuple[float, float]]:
        """``count`` reports of ``kind``; TimeoutError if they do not all come in time."""
        deadline = time.monotonic() + timeout
        found: list[tuple[float, float]] = []
        while len(found) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                name, first, second = self.sock.recv(256).decode().split()
            except TimeoutError:
                missing = f"{len(found)} of {count} {kind} tasks ran in {timeout:.0f}s"
                raise TimeoutError(missing) from None
            self.seen[name] += 1
            if name == kind:
                found.append((float(first), float(second)))
        return found

    def close(self) -> None:
        self.sock.close()


def worker_env(plan: Plan, broker: str, reports: Reports) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BENCH_BROKER=broker, BENCH_DATABASE_URL=plan.database_url,
        BENCH_REDIS_URL=plan.redis_url, BENCH_KEY_PREFIX=plan.prefix, BENCH_QUEUE=plan.queue,
        BENCH_REPORT_TO=reports.address, PYTHONPATH=str(REPO),
    )
    return env


@contextlib.contextmanager
def worker(plan: Plan, broker: str, reports: Reports, log: Path, pool: str = "prefork",
           concurrency: int | None = None,
           queues: Sequence[str] = ()) -> Iterator[subprocess.Popen]:
    """A ``celery worker`` for ``broker`` consuming ``queues`` (default: the plan's queue),
    stopped (then killed if need be) on exit."""
    command = [
        str(CELERY), "-A", "bench.app", "worker", "-P", pool,
        "-c", str(concurrency or plan.concurrency),
        "--prefetch-multiplier", str(plan.prefetch), "-Q", ",".join(queues or [plan.queue]),
        "-l", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=worker_env(plan, broker, reports), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def enqueue_rate(app: Celery, producer: Producer, count: int) -> float:
    """Tasks per second published by one producer; the first (warm-up) one is not timed."""
    task = app.tasks[NOOP]
    task.apply_async(producer=producer)
    started = time.perf_counter()
    for _ in range(count):
        task.apply_async(producer=producer)
    return count / (time.perf_counter() - started)


def transactional_enqueue_rate(
    app: Celery, producer: Producer, database_url: str, count: int
) -> float:
    """Tasks per second published by pgjobs inside one transaction of the caller's, commit
    included (``broker.in_transaction``)."""
    import psycopg

    from broker import in_transaction

    task = app.tasks[NOOP]
    with psycopg.connect(database_url) as conn:
        started = time.perf_counter()
        with conn.transaction(), in_transaction(conn):
            for _ in range(count):
                task.apply_async(producer=producer)
        return count / (time.perf_counter() - started)


def drain_rate(reports: Reports, count: int) -> float:
    """Tasks per second, from the first task's start to the last task's end."""
    runs = reports.collect("noop", count, timeout=max(120.0, count / 20))
    return count / (max(end for _, end in runs) - min(start for start, _ in runs))


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class Subject:
    """One broker under test: its app, a connection of our own, its report socket, figures."""

    def __init__(self, plan: Plan, broker: str, logdir: Path) -> None:
        self.plan, self.result, self.samples, self.waited = plan, Result(broker), [], 0.0
        self.app, self.reports = plan.app(broker), Reports()
        self.log = logdir / f"worker-{broker}.log"
        # Not Celery's producer pool: it is process-global and would outlive this run.
        self.connection = self.app.connection_for_write()
        self.producer: Producer | None = None

    def attempt(self, step: Callable[[], None]) -> None:
        """Run ``step`` unless this broker already failed; a failure is recorded, not raised,
        so that one broker failing does not hide the others' figures."""
        if self.result.error:
            return
        try:
            step()
        except Exception as error:
            self.result.error = f"{type(error).__name__}: {error} (log: {self.log})"

    def worker(self) -> contextlib.AbstractContextManager:
        return worker(self.plan, self.result.broker, self.reports, self.log)

    def throughput(self) -> None:
        """Enqueue then drain, ``rounds`` times; the medians."""
        self.producer = self.connection.Producer()
        enqueue, drain = [], []
        for _ in range(self.plan.rounds):
            enqueue.append(enqueue_rate(self.app, self.producer, self.plan.tasks))
            with self.worker():
                drain.append(drain_rate(self.reports, self.plan.tasks + 1))
        self.result.enqueue_rate = statistics.median(enqueue)
        self.result.drain_rate = statistics.median(drain)

    def probe(self, timeout: float = 30) -> float:
        """Publish one probe and wait for it to start; the delay in milliseconds."""
        self.app.tasks[PROBE].apply_async((time.time(),), producer=self.producer)
        ((published, started),) = self.reports.collect("probe", 1, timeout=timeout)
        return (started - published) * 1000

    def warm_up(self) -> None:
        """Wait out the worker's start-up with one probe that is not counted."""
        self.probe(timeout=120)

    def sample(self) -> None:
        started = time.monotonic()
        self.samples.append(self.probe())
        self.waited += time.monotonic() - started

    def wants_sample(self) -> bool:
        """More samples wanted, and this broker's probes have not used up the budget."""
        return (not self.result.error and len(self.samples) < self.plan.samples
                and self.waited < self.plan.latency_budget)

    def summarise(self) -> None:
        if self.samples:
            self.result.samples = len(self.samples)
            self.result.p50_ms = percentile(self.samples, 50)
            self.result.p99_ms = percentile(self.samples, 99)

    def transactional(self) -> None:
        # The tasks stay queued: the database is dropped at the end.
        self.result.transactional_enqueue_rate = transactional_enqueue_rate(
            self.app, self.producer, self.plan.database_url, self.plan.tasks)

    def close(self) -> None:
        self.reports.close()
        self.connection.close()
        self.app.close()


def sample_latencies(subjects: list[Subject], plan: Plan) -> None:
    """Probe every broker's idle worker in turn (random order each round), so that all of
    them are measured under the same machine load."""
    live = [subject for subject in subjects if not subject.result.error]
    with contextlib.ExitStack() as stack:
        for subject in live:
            stack.enter_context(subject.worker())
        for subject in live:
            subject.attempt(subject.warm_up)
        while active := [subject for subject in live if subject.wants_sample()]:
            random.shuffle(active)
            for subject in active:
                subject.attempt(subject.sample)
                time.sleep(random.uniform(0, plan.pause))
    for subject in live:
        subject.summarise()


def run(plan: Plan, brokers: list[str], logdir: Path) -> list[Result]:
    subjects = [Subject(plan, broker, logdir) for broker in brokers]
    try:
        for subject in subjects:
            subject.attempt(subject.throughput)
        sample_latencies(subjects, plan)
        for subject in subjects:
            if subject.result.broker == "pgjobs":
                subject.attempt(subject.transactional)
    finally:
        for subject in subjects:
            subject.close()
    return [subject.result for subject in subjects]


def table(results: list[Result]) -> str:
    """The figures, each with its ratio to Redis when Redis was measured."""
    redis = next((r for r in results if r.broker == "redis" and not r.error), None)
    lines = [f"{'broker':<8} {'enqueue/s':>16} {'drain/s':>16} {'p50 ms':>14} {'p99 ms':>14}"
             f" {'samples':>8}"]
    for r in results:
        if r.error:
            lines.append(f"{r.broker:<8} failed: {r.error}")
            continue
        cells = [_cell(getattr(r, name), redis and getattr(redis, name)) for name in
                 ("enqueue_rate", "drain_rate", "p50_ms", "p99_ms")]
        lines.append(f"{r.broker:<8} {cells[0]:>16} {cells[1]:>16} {cells[2]:>14} {cells[3]:>14}"
                     f" {r.samples:>8}")
    lines.append("(xN = ratio to Redis; rates: higher is better, latencies: lower is better)")
    return "\n".join(lines + _transactional(results, redis) + _targets(results, redis))


def _transactional(results: list[Result], redis: Result | None) -> list[str]:
    ours = next((r for r in results if r.broker == "pgjobs" and not r.error), None)
    if ours is None:
        return []
    rate = _cell(ours.transactional_enqueue_rate, redis and redis.enqueue_rate)
    return [f"enqueue/s inside one caller transaction (pgjobs, broker.in_transaction): {rate}"]


def _cell(value: float, reference: float | None) -> str:
    shown = f"{value:.0f}" if value >= 100 else f"{value:.2f}"
    return f"{shown} ({value / reference:.2f}x)" if reference else shown


def _targets(results: list[Result], redis: Result | None) -> list[str]:
    ours = next((r for r in results if r.broker == "pgjobs" and not r.error), None)
    if not (ours and redis):
        return []
    drain, p50 = ours.drain_rate / redis.drain_rate, ours.p50_ms / redis.p50_ms
    return [f"target drain >= 1.0x Redis: {drain:.2f}x {'met' if drain >= 1 else 'NOT met'}",
            f"target p50 <= 1.5x Redis:   {p50:.2f}x {'met' if p50 <= 1.5 else 'NOT met'}"]


def _brokers(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BROKERS))
    if unknown or not names:
        raise click.BadParameter(f"use a comma-separated subset of {','.join(BROKERS)}")
    return names


@click.command()
@click.option("--tasks", default=2000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="No-op tasks published, then drained.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Enqueue and drain rounds per broker; the median is shown.")
@click.option("--samples", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Latency samples per broker.")
@click.option("--brokers", default=",".join(BROKERS), show_default=True, callback=_brokers,
              help="Which brokers to measure, in order.")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--prefetch", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="worker_prefetch_multiplier, the same for every broker.")
@click.option("--pause", default=0.05, show_default=True, type=click.FloatRange(0, 10),
              help="Longest random pause between latency samples, in seconds.")
@click.option("--latency-budget", default=60.0, show_default=True,
              type=click.FloatRange(1, 3600),
              help="Seconds a broker's latency probes may take in all.")
@click.option("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
              show_default=True, help="PostgreSQL server on which the bench database is made.")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True)
@click.option("--rabbitmq-url", default=RABBITMQ_URL, show_default=True)
def main(brokers: list[str], server_url: str, redis_url: str, rabbitmq_url: str,
         **sizes: float) -> None:
    """Measure enqueue rate, drain throughput and latency per broker; print a table."""
    if "redis" in brokers and not redis_reachable(redis_url):
        raise click.ClickException(f"cannot reach Redis at {redact(redis_url)}; start it "
                                   "or set --redis-url, or leave redis out of --brokers")
    if "rabbitmq" in brokers and not rabbitmq_reachable(rabbitmq_url):
        raise click.ClickException(f"cannot reach RabbitMQ at {redact(rabbitmq_url)}; start "
                                   "it or set --rabbitmq-url, or leave rabbitmq out of --brokers")
    os.environ["BENCH_RABBITMQ_URL"] = rabbitmq_url  # the workers inherit it
    run_id = uuid.uuid4().hex[:10]
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgjobs-bench-{run_id}"
    logdir.mkdir(parents=True)
    with bench_database(server_url, run_id) as database_url:
        plan = Plan(database_url=database_url, redis_url=redis_url, run_id=run_id, **sizes)
        click.echo(f"bench: {plan.tasks} tasks x {plan.rounds} rounds, "
                   f"{plan.samples} latency samples, "
                   f"prefork -c {plan.concurrency}, prefetch x{plan.prefetch}, "
                   f"{os.cpu_count()} CPUs")
        try:
            results = run(plan, brokers, logdir)
        finally:
            if "redis" in brokers:
                delete_redis_keys(redis_url, plan.prefix)
            if "rabbitmq" in brokers:
                delete_rabbitmq_queue(rabbitmq_url, plan.queue)
    click.echo(table(results))
    if any(r.error for r in results):
        raise SystemExit(1)
    shutil.rmtree(logdir, ignore_errors=True)  # worker logs are kept only when a run failed


if __name__ == "__main__":
    main()
