"""Benchmark result backends side by side: pgjobs', Celery's database backend, Redis.

Run from the repository root::

    .venv/bin/python -m bench.results                 # all three, default sizes
    .venv/bin/python -m bench.results --samples 50 --backends pgjobs,redis

Every backend runs with pgjobs' broker on the same fresh database, and with the same worker
settings (prefork, ``-c 2``, prefetch multiplier 4, acks late, JSON, remote control off):
one worker per backend, each on a queue of its own. Redis needs the ``bench`` extra.

1. drain throughput, results ignored vs stored: ``--tasks`` no-op tasks published with the
   worker stopped, then drained; from the first task's start to the last task's end
   (ignored) or to the last result's ``date_done`` (stored); ``--rounds`` rounds, each
   running every backend (in random order) both ways, medians;
2. ``delay().get()`` of a task that sleeps 20 ms, and a 10-part chord from send to the
   callback's result: all workers running at once, probed in turn (random order each
   turn) so they share the machine's load; ``--samples`` and ``--chords`` per backend;
   p50 and p99.

The database is dropped at the end; Redis keys carry a per-run prefix and are deleted.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click
import psycopg
from celery import Celery, chord

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.app import BACKENDS, COLLECT, NOOP, PART, SLEEP, build_app  # noqa: E402
from bench.database import bench_database, delete_redis_keys, redis_reachable  # noqa: E402
from bench.run import REPO, Reports, _stop, percentile  # noqa: E402
from broker.urls import redact  # noqa: E402

CELERY = Path(sys.executable).with_name("celery")
QUEUED = "SELECT count(*) FROM pgjobs_broker_message WHERE queue = %s"
CHORD_PARTS = 10
SLEEP_SECONDS = 0.02
WAIT = 60.0


@dataclass(frozen=True)
class Plan:
    tasks: int
    rounds: int
    samples: int
    chords: int
    concurrency: int
    prefetch: int
    pause: float
    database_url: str
    redis_url: str
    run_id: str

    @property
    def prefix(self) -> str:
        return f"pgjobs-bench-{self.run_id}:"


@dataclass
class Figures:
    backend: str
    get_ms: list[float] = field(default_factory=list)
    chord_ms: list[float] = field(default_factory=list)
    drain_ignored: float = math.nan
    drain_stored: float = math.nan
    error: str = ""


class Subject:
    """One backend under test: its caller app, its worker, its figures."""

    def __init__(self, plan: Plan, backend: str, logdir: Path) -> None:
        self.plan, self.figures = plan, Figures(backend)
        self.queue = f"bench-{plan.run_id}-{backend}"
        self.app: Celery = build_app("pgjobs", plan.database_url, plan.redis_url, plan.prefix,
                                     self.queue, backend)
        self.reports = Reports()
        self.log = logdir / f"worker-{backend}.log"
        self.drained_ignored: list[float] = []
        self.drained_stored: list[float] = []

    def attempt(self, step: Callable[[], None]) -> None:
        """Run ``step`` unless this backend already failed; record a failure, not raise it."""
        if self.figures.error:
            return
        try:
            step()
        except Exception as error:
            self.figures.error = f"{type(error).__name__}: {error} (log: {self.log})"

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        env = dict(os.environ, BENCH_BROKER="pgjobs", BENCH_DATABASE_URL=self.plan.database_url,
                   BENCH_REDIS_URL=self.plan.redis_url, BENCH_KEY_PREFIX=self.plan.prefix,
                   BENCH_QUEUE=self.queue, BENCH_BACKEND=self.figures.backend,
                   BENCH_REPORT_TO=self.reports.address, PYTHONPATH=str(REPO))
        command = [str(CELERY), "-A", "bench.app", "worker", "-P", "prefork",
                   "-c", str(self.plan.concurrency), "--prefetch-multiplier",
                   str(self.plan.prefetch), "-Q", self.queue, "-l", "WARNING",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.log.open("ab") as out:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        try:
            yield
        finally:
            _stop(process)

    # -- 1. drain ---------------------------------------------------------------------------

    def drain_round(self) -> None:
        """One drain with results ignored and one with results stored, in random order."""
        for store in random.sample([False, True], 2):
            (self.drained_stored if store else self.drained_ignored).append(
                self._drain_once(store))

    def summarise_drain(self) -> None:
        if self.drained_ignored and self.drained_stored:
            self.figures.drain_ignored = statistics.median(self.drained_ignored)
            self.figures.drain_stored = statistics.median(self.drained_stored)

    def _drain_once(self, store: bool) -> float:
        task = self.app.tasks[NOOP]
        with self.app.producer_or_acquire() as producer:
            sent = [task.apply_async(producer=producer, ignore_result=not store)
                    for _ in range(self.plan.tasks)]
        with self.worker():
            runs = self.reports.collect("noop", len(sent), timeout=max(120.0, len(sent) / 20))
            end = max(finish for _, finish in runs)
            if store:
                end = max(_epoch(_done_at(result)) for result in sent)
            # Stopped before its last acks, a worker would leave tasks for the next round.
            self._wait_until_acknowledged()
        return len(sent) / (end - min(start for start, _ in runs))

    def _wait_until_acknowledged(self) -> None:
        deadline = time.monotonic() + WAIT
        with psycopg.connect(self.plan.database_url, autocommit=True) as conn:
            while conn.execute(QUEUED, (self.queue,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tasks of {self.queue} still unacknowledged")
                time.sleep(0.05)

    # -- 2. latency -------------------------------------------------------------------------

    def warm_up(self) -> None:
        self.app.tasks[SLEEP].delay(0).get(timeout=120)

    def sample_get(self) -> None:
        started = time.perf_counter()
        self.app.tasks[SLEEP].delay(SLEEP_SECONDS).get(timeout=WAIT)
        self.figures.get_ms.append((time.perf_counter() - started) * 1000)

    def sample_chord(self) -> None:
        part, collect = self.app.tasks[PART], self.app.tasks[COLLECT]
        started = time.perf_counter()
        result = chord(part.s(index) for index in range(CHORD_PARTS))(collect.s())
        assert result.get(timeout=WAIT) == CHORD_PARTS
        self.figures.chord_ms.append((time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self.reports.close()
        self.app.close()


def _done_at(result) -> datetime:
    """When ``result`` was stored, as its backend recorded it."""
    result.get(timeout=WAIT)
    return result.date_done


def _epoch(moment: datetime) -> float:
    # Celery's database backend and pgjobs' store naive UTC; Redis an aware time.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def sample_latencies(subjects: list[Subject], plan: Plan) -> None:
    """Probe every backend's idle worker in turn, in random order each round."""
    live = [subject for subject in subjects if not subject.figures.error]
    with contextlib.ExitStack() as stack:
        for subject in live:
            stack.enter_context(subject.worker())
        for subject in live:
            subject.attempt(subject.warm_up)
        for rounds, step in ((plan.samples, "sample_get"), (plan.chords, "sample_chord")):
            for _ in range(rounds):
                random.shuffle(live)
                for subject in live:
                    subject.attempt(getattr(subject, step))
                    time.sleep(random.uniform(0, plan.pause))


def run(plan: Plan, backends: list[str], logdir: Path) -> list[Figures]:
    subjects = [Subject(plan, backend, logdir) for backend in backends]
    try:
        # Round by round, backends in random order: the machine's load varies over minutes,
        # and every backend should see the same share of it.
        for _ in range(plan.rounds):
            for subject in random.sample(subjects, len(subjects)):
                subject.attempt(subject.drain_round)
        for subject in subjects:
            subject.summarise_drain()
        sample_latencies(subjects, plan)
    finally:
        for subject in subjects:
            subject.close()
    return [subject.figures for subject in sorted(subjects, key=lambda s: backends.index(
        s.figures.backend))]


def table(results: list[Figures]) -> str:
    """The figures as a Markdown table, each with its ratio to Redis, then the targets."""
    redis = next((r for r in results if r.backend == "redis" and not r.error), None)
    head = ("| backend | get p50 ms | get p99 ms | chord p50 ms | drain ignored/s "
            "| drain stored/s | stored/ignored |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.backend} | failed: {r.error} |||||")
            continue
        cells = [_cell(value, redis and ref) for value, ref in (
            (_p(r.get_ms, 50), redis and _p(redis.get_ms, 50)),
            (_p(r.get_ms, 99), redis and _p(redis.get_ms, 99)),
            (_p(r.chord_ms, 50), redis and _p(redis.chord_ms, 50)),
            (r.drain_ignored, None), (r.drain_stored, None))]
        lines.append(f"| {r.backend} | {' | '.join(cells)} | "
                     f"{r.drain_stored / r.drain_ignored:.2f} |")
    lines.append("(xN = ratio to Redis; latencies: lower is better)")
    return "\n".join(lines + _targets(results, redis))


def _p(values: list[float], pct: float) -> float:
    return percentile(values, pct) if values else math.nan


def _cell(value: float, reference: float | None) -> str:
    shown = f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return f"{shown} ({value / reference:.2f}x)" if reference else shown


def _targets(results: list[Figures], redis: Figures | None) -> list[str]:
    ours = next((r for r in results if r.backend == "pgjobs" and not r.error), None)
    if ours is None:
        return []
    lines = []
    drain = ours.drain_stored / ours.drain_ignored
    if redis is not None:
        get = _p(ours.get_ms, 50) / _p(redis.get_ms, 50)
        chord_ = _p(ours.chord_ms, 50) / _p(redis.chord_ms, 50)
        lines += [f"target get p50 <= 1.5x Redis:   {get:.2f}x {_met(get <= 1.5)}",
                  f"target chord p50 <= 1.5x Redis: {chord_:.2f}x {_met(chord_ <= 1.5)}"]
    lines.append(f"target drain stored >= 0.8x ignored: {drain:.2f}x {_met(drain >= 0.8)}")
    return lines


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _backends(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or set(names) - set(BACKENDS):
        raise click.BadParameter(f"use a comma-separated subset of {','.join(BACKENDS)}")
    return names


@click.command()
@click.option("--tasks", default=2000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="No-op tasks drained per round, with results ignored, then stored.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Drain rounds per backend; the median is shown.")
@click.option("--samples", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="delay().get() samples per backend.")
@click.option("--chords", default=50, show_default=True, type=click.IntRange(1, 100_000),
              help="10-part chord samples per backend.")
@click.option("--backends", default=",".join(BACKENDS), show_default=True,
              callback=_backends, help="Which result backends to measure, in order.")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--prefetch", default=4, show_default=True, type=click.IntRange(1, 1000))
@click.option("--pause", default=0.05, show_default=True, type=click.FloatRange(0, 10),
              help="Longest random pause between samples, in seconds.")
@click.option("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
              show_default=True, help="PostgreSQL server on which the bench database is made.")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True)
def main(backends: list[str], server_url: str, redis_url: str, **sizes: float) -> None:
    """Measure get and chord latency and drain throughput per result backend."""
    if "redis" in backends and not redis_reachable(redis_url):
        raise click.ClickException(f"cannot reach Redis at {redact(redis_url)}; start it "
                                   "or set --redis-url, or leave redis out of --backends")
    run_id = uuid.uuid4().hex[:10]
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgjobs-bench-{run_id}"
    logdir.mkdir(parents=True)
    with bench_database(server_url, run_id) as database_url:
        plan = Plan(database_url=database_url, redis_url=redis_url, run_id=run_id, **sizes)
        click.echo(f"bench results: {plan.tasks} tasks x {plan.rounds} rounds, "
                   f"{plan.samples} gets, {plan.chords} chords, prefork -c {plan.concurrency}, "
                   f"prefetch x{plan.prefetch}, pgjobs broker, {os.cpu_count()} CPUs")
        try:
            results = run(plan, backends, logdir)
        finally:
            if "redis" in backends:
                delete_redis_keys(redis_url, plan.prefix)
    click.echo(table(results))
    if any(r.error for r in results):
        raise SystemExit(1)
    shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
