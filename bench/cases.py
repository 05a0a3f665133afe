"""What the scale benchmarks (``bench.scale``, ``bench.producers``, ``bench.idle``) share.

- :func:`stage`: a fresh bench database and Redis key prefix per case, and a worker log folder;
- :func:`fill` and :func:`produce`: no-op tasks queued from this process or from several;
- :class:`Comparison`: one situation against another, pgjobs and Redis side by side, with
  the ratios and the targets they are held to; printed as a table and written as JSON;
- :class:`Size` and :func:`cli`: the size options and the options every scale bench takes.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
from celery import Celery

from bench.app import NOOP
from bench.database import bench_database, delete_redis_keys, redis_reachable
from bench.run import Plan
from broker.urls import redact

BROKERS = ("pgjobs", "redis")
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUED = "SELECT count(*) FROM pgjobs_broker_message WHERE queue = ANY(%s)"
CHUNK = 10_000  # signatures per enqueue_many call when filling a queue


@dataclass
class Stage:
    """One case's own database, Redis prefix and log folder."""

    plan: Plan
    server_url: str
    logdir: Path
    _filler: Celery | None = None

    @property
    def filler(self) -> Celery:
        """The one pgjobs app that fills this stage's queues (kombu's producer pools are
        global per database: closing one app's closes them for all the others)."""
        if self._filler is None:
            self._filler = self.plan.app("pgjobs")
        return self._filler

    def close(self) -> None:
        if self._filler is not None:
            self._filler.pool.force_close_all()  # Celery's close() forgets its pools
            self._filler.close()

    def variant(self, name: str) -> Plan:
        """The plan with a queue (and Redis prefix) of its own, on the same database: one
        measurement does not walk over the dead rows or keys another one left."""
        return replace(self.plan, run_id=f"{self.plan.run_id}-{name}")

    def log(self, plan: Plan, broker: str) -> Path:
        return self.logdir / f"worker-{broker}-{plan.queue}.log"


@contextlib.contextmanager
def stage(server_url: str, redis_url: str, concurrency: int = 2,
          prefetch: int = 4) -> Iterator[Stage]:
    """A fresh database (dropped after) and a Redis prefix (its keys deleted after); worker
    logs are kept only when the case failed."""
    run_id = uuid.uuid4().hex[:10]
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgjobs-bench-{run_id}"
    logdir.mkdir(parents=True)
    with bench_database(server_url, run_id) as database_url:
        plan = Plan(tasks=0, rounds=1, samples=0, concurrency=concurrency, prefetch=prefetch,
                    pause=0, latency_budget=0, database_url=database_url,
                    redis_url=redis_url, run_id=run_id)
        here = Stage(plan, server_url, logdir)
        try:
            yield here
        except (RuntimeError, TimeoutError) as error:
            raise click.ClickException(f"{error} (worker logs: {logdir})") from None
        finally:
            here.close()
            delete_redis_keys(redis_url, f"pgjobs-bench-{run_id}")  # every variant's keys
    shutil.rmtree(logdir, ignore_errors=True)


def spread(count: int, parts: int) -> list[int]:
    """``count`` split into ``parts`` near-equal shares."""
    return [count // parts + (1 if part < count % parts else 0) for part in range(parts)]


def fill(stage: Stage, plan: Plan, broker: str, count: int, queues: Sequence[str] = (),
         **options: Any) -> None:
    """Queue ``count`` no-op tasks on ``plan``'s queue, or round robin over ``queues``,
    quickly and untimed: pgjobs through ``enqueue_many``, Redis from one producer process a
    CPU."""
    if broker != "pgjobs":
        produce(plan, broker, os.cpu_count() or 1, count, queues, options, warm_up=False)
        return
    from broker import enqueue_many

    task, names = stage.filler.tasks[NOOP], list(queues) or [plan.queue]
    for start in range(0, count, CHUNK):
        enqueue_many([task.s().set(queue=names[n % len(names)])
                      for n in range(start, min(count, start + CHUNK))], **options)


def produce(plan: Plan, broker: str, processes: int, count: int, queues: Sequence[str] = (),
            options: dict[str, Any] | None = None, warm_up: bool = True,
            transport: dict[str, Any] | None = None) -> float:
    """Tasks per second of ``processes`` producer processes publishing ``count`` no-op tasks
    in all, each with a ``delay()`` loop (``apply_async(**options)``), started together; from
    the first one's start to the last one's end. With ``warm_up``, each first publishes one
    untimed task of its own. ``transport`` adds to the broker's transport options."""
    context = multiprocessing.get_context("spawn")  # no broker connection crosses a fork
    barrier, out = context.Barrier(processes), context.SimpleQueue()
    children = [context.Process(target=_producer, args=(
        plan, broker, share, tuple(queues), options or {}, transport or {}, warm_up, barrier,
        out))
        for share in spread(count, processes)]
    for child in children:
        child.start()
    try:
        spans = [out.get() for _ in children]
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    errors = [error for _, _, error in spans if error]
    if errors:
        raise RuntimeError(f"a producer failed: {errors[0]}")
    return count / (max(end for _, end, _ in spans) - min(start for start, _, _ in spans))


def _producer(plan: Plan, broker: str, count: int, queues: tuple[str, ...],
              options: dict[str, Any], transport: dict[str, Any], warm_up: bool,
              barrier: Any, out: Any) -> None:
    """One producer process: reports ``(started, ended, error)``."""
    try:
        app = plan.app(broker)
        if transport:
            app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                                 **transport}
        task = app.tasks[NOOP]
        if warm_up:
            task.apply_async(**options)
        barrier.wait(timeout=300)
        started = time.time()
        if queues:
            for n in range(count):
                task.apply_async(queue=queues[n % len(queues)], **options)
        else:
            for _ in range(count):
                task.apply_async(**options)
        out.put((started, time.time(), ""))
    except Exception as error:  # reported to the parent, which raises it
        barrier.abort()
        out.put((0.0, 0.0, f"{type(error).__name__}: {error}"))


def queued(plan: Plan, broker: str, queues: Sequence[str] = ()) -> int:
    """Messages waiting in ``queues`` (default the plan's queue)."""
    names = list(queues) or [plan.queue]
    if broker == "pgjobs":
        import psycopg

        with psycopg.connect(plan.database_url, autocommit=True) as conn:
            return conn.execute(QUEUED, (names,)).fetchone()[0]
    import redis

    client = redis.Redis.from_url(plan.redis_url)
    try:
        return sum(client.llen(plan.prefix + name) for name in names)
    finally:
        client.close()


def expect_queued(plan: Plan, broker: str, expected: int, queues: Sequence[str] = ()) -> None:
    """Every task published is there once: a lost or a doubled message fails the bench."""
    found = queued(plan, broker, queues)
    if found != expected:
        raise RuntimeError(f"{broker}: {found} messages queued, {expected} published")


@dataclass
class Check:
    """A ratio or figure and the target it is held to (``bound`` None: shown, no target)."""

    label: str
    value: float
    op: str = ">="
    bound: float | None = None
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.bound is None:
            return None
        return {">=": self.value >= self.bound, ">": self.value > self.bound,
                "<=": self.value <= self.bound}[self.op]

    def short(self) -> str:
        shown = f"{self.label} {_number(self.value)}{self.unit}"
        if self.bound is None:
            return shown
        return (f"{shown} (target {self.op} {_number(self.bound)}{self.unit}, "
                f"{'met' if self.met else 'NOT met'})")


@dataclass
class Comparison:
    """Figures of each broker in each situation (``groups``; the first is the baseline)."""

    name: str
    title: str
    unit: str
    groups: list[str]
    figures: dict[str, list[float | None]]
    checks: list[Check] = field(default_factory=list)
    note: str = ""

    def value(self, broker: str, group: int) -> float:
        found = self.figures.get(broker, [])[group]
        return math.nan if found is None else found

    def ratio(self, broker: str, group: int = -1, base: int = 0) -> float:
        """``broker`` in situation ``group`` over itself in ``base``."""
        return self.value(broker, group) / self.value(broker, base)

    def versus(self, group: int = -1, broker: str = "pgjobs", other: str = "redis") -> float:
        return self.value(broker, group) / self.value(other, group)

    def check(self, label: str, value: float, op: str = ">=", bound: float | None = None,
              unit: str = "x") -> Comparison:
        self.checks.append(Check(label, value, op, bound, unit))
        return self

    def table(self) -> str:
        width = max(14, *(len(group) + 2 for group in self.groups))
        lines = [f"{self.title} ({self.unit})",
                 f"{'':<14}" + "".join(f"{group:>{width}}" for group in self.groups)]
        for broker in self.figures:
            lines.append(f"{broker:<14}" + "".join(
                f"{_number(self.value(broker, n)):>{width}}" for n in range(len(self.groups))))
        if {"pgjobs", "redis"} <= set(self.figures):
            lines.append(f"{'pgjobs/redis':<14}" + "".join(
                f"{_ratio(self.versus(n)):>{width}}" for n in range(len(self.groups))))
        lines += [f"  {check.short()}" for check in self.checks]
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for check, shown in zip(self.checks, data["checks"], strict=True):
            shown["met"] = check.met
        for values in data["figures"].values():
            values[:] = [None if v is None or math.isnan(v) else v for v in values]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comparison:
        checks = [Check(**{k: v for k, v in check.items() if k != "met"})
                  for check in data.get("checks", [])]
        return cls(**{**data, "checks": checks})


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


@dataclass(frozen=True)
class Size:
    """A size option of a scale bench; ``bench.suite`` offers it too and passes it on."""

    flag: str
    default: float
    help: str
    low: float = 1

    @property
    def param(self) -> str:
        return self.flag[2:].replace("-", "_")

    def option(self) -> Callable:
        kind = (click.IntRange(int(self.low), 10_000_000) if isinstance(self.default, int)
                else click.FloatRange(self.low, 3600))
        return click.option(self.flag, default=self.default, show_default=True, type=kind,
                            help=self.help)


def sized(sizes: Sequence[Size]) -> Callable:
    """Apply the options of ``sizes`` to a command."""
    def decorate(command: Callable) -> Callable:
        for size in reversed(sizes):
            command = size.option()(command)
        return command
    return decorate


def arguments(sizes: Sequence[Size], values: dict[str, Any]) -> list[str]:
    """The command line that passes ``values`` of ``sizes`` on."""
    return [part for size in sizes for part in (size.flag, str(values[size.param]))]


def cli(sizes: Sequence[Size]) -> Callable:
    """The options of every scale bench: its sizes, the servers, and ``--json``."""
    def decorate(command: Callable) -> Callable:
        command = click.option("--json", "json_path", callback=_writable,
                               type=click.Path(dir_okay=False, path_type=Path),
                               help="Also write the figures to this file, as JSON.")(command)
        command = click.option("--redis-url", default=REDIS_URL, show_default=True)(command)
        command = click.option("--server-url", default=SERVER_URL, show_default=True,
                               help="PostgreSQL server on which the bench databases are "
                               "made.")(command)
        return sized(sizes)(command)
    return decorate


def _writable(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """Refuse, before anything runs, a file that could not be written at the end."""
    if path is not None and not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
        raise click.BadParameter(f"{path.parent} is not a folder this user can write to")
    return path


def stop_on_sigterm() -> None:
    """SIGTERM ends this process as Ctrl-C would: its workers are stopped (they run in
    sessions of their own, out of reach of a signal to this one) and its database dropped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def require_redis(redis_url: str) -> None:
    if not redis_reachable(redis_url):
        raise click.ClickException(f"cannot reach Redis at {redact(redis_url)}; start it or "
                                   "set --redis-url")


def report(comparisons: list[Comparison], json_path: Path | None, **facts: Any) -> None:
    """Print every target and how it fared; with ``json_path``, write every figure there."""
    click.echo("targets:")
    for check in (check for comparison in comparisons for check in comparison.checks
                  if check.bound is not None):
        click.echo(f"  {check.short()}")
    if json_path is not None:
        data = {"cpus": os.cpu_count(), **facts,
                "comparisons": [comparison.to_json() for comparison in comparisons]}
        json_path.write_text(json.dumps(data, indent=2) + "\n")
