"""Drain throughput at scale, pgjobs and Redis side by side in one run.

Run from the repository root::

    .venv/bin/python -m bench.scale                  # the sizes shown by --help
    .venv/bin/python -m bench.scale --big 4000 --timed 1000 --held 500 --spread 500 \
        --backlog 2000

Every case has a fresh database and Redis prefix, and every drain a queue of its own; the
worker is the one of ``bench.run`` (prefork ``-c 2``, prefetch multiplier 4, acks late), started
after its tasks are queued; a drain rate is timed from the first task's start to the last
task's end.

1. backlog: ``--small`` tasks queued and drained to the end (``--rounds`` times, median);
   then ``--big`` queued, and the first ``--timed`` of them timed. For pgjobs, the next
   ``--timed`` again after an ``ANALYZE`` of the message table, as autovacuum would run on a
   server that has it on: it tells the planner's choice from the broker's own work. Target:
   pgjobs with ``--big`` queued at least 0.9x of itself with ``--small``.
2. held transaction: ``--held`` tasks drained, then as many again while another session
   holds a transaction open on the bench database (``BEGIN; SELECT txid_current();``, then
   idle), so that no row the drain deletes can be cleaned up. Redis runs beside the same
   open transaction, as the control. Target: pgjobs at least 0.8x of itself without it.
3. queues: ``--spread`` tasks on one queue, then as many spread round robin over ``--queues``
   queues that one worker consumes. Target: pgjobs at least 0.8x of itself on one queue.
4. behind a backlog: ``--backlog`` tasks on a big queue; once the worker (consuming it and a
   small queue) is draining them, ``--probes`` probes go to the small queue, one after
   another; the slowest publish-to-start time. Target: within seconds (at most 5 s).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cases  # noqa: E402
from bench.app import PROBE  # noqa: E402
from bench.cases import BROKERS, Comparison, Size, Stage  # noqa: E402
from bench.run import Plan, Reports, drain_rate, worker  # noqa: E402

HOLD = "SELECT txid_current()"  # an xid of its own: the oldest running transaction
ANALYZE = "ANALYZE pgjobs_broker_message"
BACKLOG_RATIO, HELD_RATIO, QUEUES_RATIO, SERVED_WITHIN = 0.9, 0.8, 0.8, 5.0
SIZES = (
    Size("--small", 1000, "Tasks queued for the small-backlog drains."),
    Size("--big", 100_000, "Tasks queued for the big-backlog drain."),
    Size("--timed", 5000, "Tasks of the big backlog timed (at most half of --big)."),
    Size("--rounds", 3, "Small-backlog drains per broker; the median is shown."),
    Size("--held", 5000, "Tasks drained with and without a transaction held open."),
    Size("--spread", 5000, "Tasks drained from one queue, and from --queues queues."),
    Size("--queues", 100, "Queues one worker consumes in the queues case.", low=2),
    Size("--backlog", 10_000, "Tasks queued ahead of the small queue's probes."),
    Size("--probes", 3, "Probes sent to the small queue behind the backlog."),
)


def drain(stage: Stage, plan: Plan, broker: str, count: int,
          queues: Sequence[str] = ()) -> float:
    """Queue ``count`` no-op tasks (over ``queues``), then drain them with one worker."""
    cases.fill(stage, plan, broker, count, queues)
    return timed_drain(stage, plan, broker, count, queues)


def timed_drain(stage: Stage, plan: Plan, broker: str, count: int,
                queues: Sequence[str] = ()) -> float:
    """The drain rate of the next ``count`` tasks already queued; then the worker stops."""
    reports = Reports()
    try:
        with worker(plan, broker, reports, stage.log(plan, broker), queues=queues):
            return drain_rate(reports, count)
    finally:
        reports.close()


def deep_backlog(stage: Stage, small: int, big: int, timed: int,
                 rounds: int) -> Comparison:
    rates: dict[str, list[float]] = {broker: [] for broker in BROKERS}
    for turn in range(rounds):  # the brokers take turns, so that both see the same load
        for broker in BROKERS:
            rates[broker].append(drain(stage, stage.variant(f"small{turn}"), broker, small))
    figures: dict[str, list[float | None]] = {}
    plan, timed = stage.variant("big"), min(timed, big // 2)
    for broker in BROKERS:
        cases.fill(stage, plan, broker, big)
        figures[broker] = [statistics.median(rates[broker]),
                           timed_drain(stage, plan, broker, timed)]
    analyse(plan.database_url)
    figures["pgjobs"].append(timed_drain(stage, plan, "pgjobs", timed))
    figures["redis"].append(None)
    result = Comparison(
        "backlog", f"Drain with {big:,} vs {small:,} queued (the first {timed:,} timed)",
        "tasks/s", [f"{small:,} queued", f"{big:,} queued", f"{big - timed:,} queued, analysed"],
        figures, note="analysed: after ANALYZE of the message table, as autovacuum would")
    return (result.check(f"pgjobs {big:,}/{small:,}", result.ratio("pgjobs", 1), ">=",
                         BACKLOG_RATIO)
            .check(f"Redis {big:,}/{small:,}", result.ratio("redis", 1))
            .check(f"pgjobs/Redis at {big:,}", result.versus(1))
            .check("pgjobs analysed/small", result.ratio("pgjobs", 2)))


def analyse(database_url: str) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(ANALYZE)


@contextlib.contextmanager
def transaction_held(database_url: str) -> Iterator[None]:
    """Another session's transaction, open and idle, on the bench database."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        conn.execute(HOLD)  # psycopg opened the transaction; it stays open until rollback
        try:
            yield
        finally:
            conn.rollback()


def held_transaction(stage: Stage, count: int) -> Comparison:
    figures: dict[str, list[float | None]] = {}
    for broker in BROKERS:
        free = drain(stage, stage.variant("free"), broker, count)
        with transaction_held(stage.plan.database_url):
            held = drain(stage, stage.variant("held"), broker, count)
        figures[broker] = [free, held]
    result = Comparison("held_transaction", "Drain while a transaction is held open",
                        "tasks/s", ["no transaction open", "a transaction held open"],
                        figures, note="Redis is the control: it never reads PostgreSQL")
    return (result.check("pgjobs held/free", result.ratio("pgjobs"), ">=", HELD_RATIO)
            .check("Redis held/free", result.ratio("redis")))


def many_queues(stage: Stage, count: int, queues: int) -> Comparison:
    figures: dict[str, list[float | None]] = {}
    for broker in BROKERS:
        one = drain(stage, stage.variant("one"), broker, count)
        plan = stage.variant("many")
        names = [f"{plan.queue}-{n}" for n in range(queues)]
        figures[broker] = [one, drain(stage, plan, broker, count, names)]
    result = Comparison("queues", f"One worker over {queues} queues vs one queue", "tasks/s",
                        ["1 queue", f"{queues} queues"], figures)
    return (result.check(f"pgjobs {queues}/1", result.ratio("pgjobs"), ">=", QUEUES_RATIO)
            .check(f"Redis {queues}/1", result.ratio("redis")))


def served_behind(stage: Stage, broker: str, count: int, probes: int) -> tuple[float, int]:
    """The slowest of ``probes`` small-queue probes published while the worker drains a
    backlog of ``count`` on the same worker, in seconds; and the backlog then left."""
    plan = stage.variant("behind")
    small = f"{plan.queue}-small"
    cases.fill(stage, plan, broker, count)
    app, reports = plan.app(broker), Reports()
    connection = app.connection_for_write()
    producer = connection.Producer()
    waits = []
    try:
        with worker(plan, broker, reports, stage.log(plan, broker), queues=[plan.queue, small]):
            reports.collect("noop", 1, timeout=120)  # the worker is draining the backlog
            for _ in range(probes):
                app.tasks[PROBE].apply_async((time.time(),), queue=small, producer=producer)
                ((published, started),) = reports.collect("probe", 1, timeout=count / 10 + 60)
                waits.append(started - published)
            left = count - reports.seen["noop"]
    finally:
        reports.close()
        connection.close()
        app.close()
    if left <= 0:
        raise RuntimeError(f"{broker}: the backlog was drained before the small queue's "
                           "probes ran; raise --backlog")
    return max(waits), left


def behind_backlog(stage: Stage, count: int, probes: int) -> Comparison:
    served = {broker: served_behind(stage, broker, count, probes) for broker in BROKERS}
    result = Comparison(
        "behind_backlog", f"A small queue's task behind a {count:,} backlog, same worker",
        "seconds to start", [f"behind {count:,}"],
        {broker: [wait] for broker, (wait, _) in served.items()},
        note="slowest of the probes; backlog then left: " + ", ".join(
            f"{broker} {left:,}" for broker, (_, left) in served.items()))
    return (result.check("pgjobs", result.value("pgjobs", 0), "<=", SERVED_WITHIN, " s")
            .check("pgjobs/Redis", result.versus()))


def run(server_url: str, redis_url: str, small: int, big: int, timed: int, rounds: int,
        held: int, spread: int, queues: int, backlog: int, probes: int) -> list[Comparison]:
    """Each case on a stage of its own."""
    steps = [lambda here: deep_backlog(here, small, big, timed, rounds),
             lambda here: held_transaction(here, held),
             lambda here: many_queues(here, spread, queues),
             lambda here: behind_backlog(here, backlog, probes)]
    results = []
    for step in steps:
        with cases.stage(server_url, redis_url) as here:
            results.append(step(here))
            click.echo(results[-1].table())
    return results


@click.command()
@cases.cli(SIZES)
def main(server_url: str, redis_url: str, json_path: Path | None, **sizes: int) -> None:
    """Drain with a big backlog, beside an open transaction, over many queues; a small
    queue behind a backlog. pgjobs and Redis, with ratios and targets."""
    cases.require_redis(redis_url)
    cases.stop_on_sigterm()
    click.echo(f"bench.scale: {sizes}")
    cases.report(run(server_url, redis_url, **sizes), json_path, sizes=sizes)


if __name__ == "__main__":
    main()
