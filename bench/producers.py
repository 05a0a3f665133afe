"""Publish rate of many producer processes at once, pgjobs and Redis side by side.

Run from the repository root::

    .venv/bin/python -m bench.producers                 # 8,000 tasks, 1 and 8 producers
    .venv/bin/python -m bench.producers --produced 2000

``--produced`` no-op tasks in all are published by 1, then by ``--producers`` processes, each
a ``delay()`` loop of its share (an untimed first call warms each one up), all started
together; the rate is from the first one's start to the last one's end. The brokers take
turns, ``--rounds`` times (median); no worker runs. Every message must then be queued
exactly once. Targets: pgjobs with ``--producers`` at least 0.9x Redis with as many, and
more than pgjobs with one.

pgjobs also runs with the transport option ``synchronous_commit: "off"`` (``pgjobs sc=off``),
which does not wait for each publish's commit to reach the disk, so that the run shows what
that flush costs on this machine beside what it costs to wait for PostgreSQL at all. And
where ``redis-server`` is installed, Redis runs a second time on a server of the bench's own
that flushes its append-only file to disk before each answer (``redis fsync``,
``appendfsync always``): the Redis as durable as pgjobs' default. The targets are against
the first, in-memory Redis.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

import click

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cases  # noqa: E402
from bench.cases import BROKERS, Comparison, Size, Stage  # noqa: E402
from bench.database import durable_redis  # noqa: E402

VERSUS_REDIS = 0.9
#: pgjobs publishing without waiting for the flush of each commit.
COMMIT_OFF = "pgjobs sc=off"
#: Redis flushing each command to disk before it answers.
REDIS_FSYNC = "redis fsync"
SIZES = (
    Size("--produced", 8000, "Tasks published in all, by one producer or by many."),
    Size("--producers", 8, "Producer processes publishing at once.", low=2),
    Size("--produced-rounds", 1, "Rounds per broker and producer count; the median."),
)


def rate(stage: Stage, run: str, processes: int, count: int, turn: int,
         durable_url: str | None) -> float:
    """Tasks per second of ``run`` (a broker, :data:`COMMIT_OFF` or :data:`REDIS_FSYNC`, on
    the Redis at ``durable_url``)."""
    broker, transport = ("pgjobs", {"synchronous_commit": "off"}) if run == COMMIT_OFF else (
        "redis" if run == REDIS_FSYNC else run, None)
    plan = stage.variant(f"{run.replace(' ', '-').replace('=', '')}-p{processes}r{turn}")
    if run == REDIS_FSYNC:
        plan = replace(plan, redis_url=durable_url)
    measured = cases.produce(plan, broker, processes, count, transport=transport)
    cases.expect_queued(plan, broker, count + processes)  # and each producer's warm-up
    return measured


def compare_producers(stage: Stage, count: int, many: int, rounds: int,
                      durable_url: str | None = None) -> Comparison:
    runs = (*BROKERS, COMMIT_OFF, *([REDIS_FSYNC] if durable_url else []))
    rates: dict[tuple[str, int], list[float]] = {}
    for turn in range(rounds):
        for processes in (1, many):
            for run in runs:
                rates.setdefault((run, processes), []).append(
                    rate(stage, run, processes, count, turn, durable_url))
    figures: dict[str, list[float | None]] = {
        run: [statistics.median(rates[run, n]) for n in (1, many)] for run in runs}
    result = Comparison("producers", f"{many} producer processes vs 1, delay() loops",
                        "tasks/s", ["1 producer", f"{many} producers"], figures,
                        note="sc=off: the transport option synchronous_commit off; redis "
                             "fsync: Redis with appendfsync always")
    result = (result.check(f"pgjobs/Redis with {many}", result.versus(), ">=", VERSUS_REDIS)
              .check(f"pgjobs {many}/1", result.ratio("pgjobs"), ">", 1.0)
              .check(f"Redis {many}/1", result.ratio("redis"))
              .check("pgjobs/Redis with 1", result.versus(0))
              .check("sc=off/Redis with 1", result.versus(0, COMMIT_OFF))
              .check(f"sc=off/Redis with {many}", result.versus(-1, COMMIT_OFF)))
    if durable_url:
        result.check("pgjobs/Redis fsync with 1", result.versus(0, other=REDIS_FSYNC))
        result.check(f"pgjobs/Redis fsync with {many}", result.versus(-1, other=REDIS_FSYNC))
    return result


@click.command()
@cases.cli(SIZES)
def main(server_url: str, redis_url: str, json_path: Path | None, produced: int,
         producers: int, produced_rounds: int) -> None:
    """Publish with 1 and with many producer processes on pgjobs and Redis; ratios."""
    cases.require_redis(redis_url)
    cases.stop_on_sigterm()
    sizes = {"produced": produced, "producers": producers, "produced_rounds": produced_rounds}
    click.echo(f"bench.producers: {sizes}")
    with cases.stage(server_url, redis_url) as here, durable_redis() as durable_url:
        result = compare_producers(here, produced, producers, produced_rounds, durable_url)
    click.echo(result.table())
    cases.report([result], json_path, sizes=sizes)


if __name__ == "__main__":
    main()
