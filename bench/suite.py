"""The scale benchmarks in one run: one JSON file of every figure, and one chart a comparison.

Run from the repository root (needs the ``bench`` extra: Redis client, psutil, matplotlib)::

    .venv/bin/python -m bench.suite                    # the sizes shown by --help
    .venv/bin/python -m bench.suite --big 2000 --timed 500 --eta 2000 --window 5 \\
        --bulk-tasks 1000 --json /tmp/scale.json --charts /tmp/charts    # a quick run

It runs ``bench.scale``, ``bench.producers``, ``bench.idle`` and ``bench.bulk`` one after
the other, each in a process of its own (each passes its sizes on), then writes ``--json``
and, into ``--charts``, ``<comparison>.png`` per comparison: pgjobs and Redis bars, the
ratios and targets in the title. A bench that fails is named in the JSON and the exit status
is 1; the others' figures are still written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

if not __package__:  # run as a script: make `bench` and `config` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import idle, producers, scale  # noqa: E402
from bench.bulk import MIN_RATE, MIN_RATIO  # noqa: E402
from bench.cases import (  # noqa: E402
    REDIS_URL,
    SERVER_URL,
    Comparison,
    Size,
    arguments,
    require_redis,
    sized,
    stop_on_sigterm,
)
from bench.run import REPO  # noqa: E402

RESULTS = REPO / "bench" / "results"
BULK = Size("--bulk-tasks", 10_000, "Tasks bench.bulk enqueues each way.")
BENCHES = (("bench.scale", scale.SIZES), ("bench.producers", producers.SIZES),
           ("bench.idle", idle.SIZES))
COLOURS = {"pgjobs": "#336791", "redis": "#d82c20"}
MACHINE = "a shared 2-core machine, other work running beside the benchmark"


def run_bench(module: str, args: list[str], server_url: str,
              redis_url: str) -> tuple[dict[str, Any] | None, float]:
    """Run ``python -m module``; its JSON (None if it failed) and its seconds."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pgjobs-bench-suite-") as folder:
        out = Path(folder) / "out.json"
        command = [sys.executable, "-m", module, "--server-url", server_url,
                   "--redis-url", redis_url, "--json", str(out), *args]
        child = subprocess.Popen(command, cwd=REPO)
        # Interrupted, the bench stops its workers and drops its database before it ends.
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the bench as well
            child.wait(timeout=120)
            raise
        except SystemExit:  # SIGTERM reached this process only
            child.terminate()
            child.wait(timeout=120)
            raise
        figures = json.loads(out.read_text()) if code == 0 else None
    return figures, time.monotonic() - started


def bulk_comparison(figures: dict[str, Any]) -> Comparison:
    """``bench.bulk``'s rates as a comparison of the suite's."""
    rates = figures["rates"]
    result = Comparison(
        "bulk", f"Enqueue {figures['tasks']:,} tasks: enqueue_many vs delay() loops",
        "tasks/s", ["delay() loop", "enqueue_many"],
        {"pgjobs": [rates["pgjobs_delay"], rates["pgjobs_enqueue_many"]],
         "redis": [rates["redis_delay"], None]})
    many = rates["pgjobs_enqueue_many"]
    return (result.check("enqueue_many", many, ">=", MIN_RATE, "/s")
            .check("enqueue_many/Redis delay()", many / rates["redis_delay"], ">=", MIN_RATIO)
            .check("pgjobs/Redis delay()", result.versus(0)))


def chart(comparison: Comparison, path: Path) -> None:
    """pgjobs and Redis bars for each situation; the ratios and targets in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    brokers, groups = list(comparison.figures), range(len(comparison.groups))
    width = 0.8 / len(brokers)
    for broker in brokers:
        shown = [g for g in groups if comparison.figures[broker][g] is not None]
        values = [comparison.value(broker, g) for g in shown]
        bars = axes.bar([g + _offset(comparison, broker, g) * width for g in shown], values,
                        width, label=broker, color=COLOURS.get(broker))
        axes.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.2f}" for v in values],
                       padding=2, fontsize=8)
    axes.set_xticks(list(groups), comparison.groups)
    axes.set_ylabel(comparison.unit)
    axes.margins(y=0.2)
    axes.legend(loc="upper left", fontsize=8)
    checks = "; ".join(check.short() for check in comparison.checks)
    title = comparison.title + "\n" + textwrap.fill(checks, 95)
    axes.set_title(title.replace(">=", "≥").replace("<=", "≤"), fontsize=9)
    figure.text(0.99, 0.01, MACHINE, ha="right", va="bottom", fontsize=6, color="grey")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _offset(comparison: Comparison, broker: str, group: int) -> float:
    """Where ``broker``'s bar stands in ``group``, in bar widths from its middle: the bars
    of the brokers measured there, side by side and centred."""
    present = [name for name, values in comparison.figures.items() if values[group] is not None]
    return present.index(broker) - (len(present) - 1) / 2


def write_json(path: Path, data: dict[str, Any]) -> None:
    """All at once: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def _folder(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"cannot make the {what} folder {path}: "
                                   f"{error.strerror}; choose another") from None
    if not os.access(path, os.W_OK):
        raise click.ClickException(f"cannot write to {path}; choose another {what} folder")


def preflight(redis_url: str, json_path: Path, charts: Path) -> None:
    """Everything the end of the run needs, checked before it starts."""
    if importlib.util.find_spec("matplotlib") is None:
        raise click.ClickException("matplotlib is not installed; install the bench extra: "
                                   ".venv/bin/pip install -e '.[bench]'")
    require_redis(redis_url)
    _folder(json_path.parent, "--json")
    _folder(charts, "--charts")


@click.command()
@sized([size for _, sizes in BENCHES for size in sizes] + [BULK])
@click.option("--server-url", default=SERVER_URL, show_default=True,
              help="PostgreSQL server on which the bench databases are made.")
@click.option("--redis-url", default=REDIS_URL, show_default=True)
@click.option("--json", "json_path", default=RESULTS / "scale.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Where every figure is written, as JSON.")
@click.option("--charts", default=RESULTS, show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the charts, one <comparison>.png each.")
def main(server_url: str, redis_url: str, json_path: Path, charts: Path,
         **sizes: float) -> None:
    """Run the scale benchmarks and bench.bulk; write one JSON file and the charts."""
    preflight(redis_url, json_path, charts)
    stop_on_sigterm()
    started, began = datetime.now(UTC), time.monotonic()
    comparisons: list[Comparison] = []
    benches: dict[str, dict[str, Any]] = {}
    plan = [(module, arguments(module_sizes, sizes)) for module, module_sizes in BENCHES]
    plan.append(("bench.bulk", ["--tasks", str(sizes["bulk_tasks"])]))
    for module, args in plan:
        click.echo(f"== {module} {' '.join(args)}")
        figures, seconds = run_bench(module, args, server_url, redis_url)
        benches[module] = {"seconds": round(seconds, 1), "error": figures is None}
        if figures is None:
            continue
        if module == "bench.bulk":
            comparisons.append(bulk_comparison(figures))
        else:
            comparisons += [Comparison.from_json(c) for c in figures["comparisons"]]
    write_json(json_path, {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - began, 1), "cpus": os.cpu_count(),
        "machine": MACHINE, "sizes": sizes, "benches": benches,
        "comparisons": [comparison.to_json() for comparison in comparisons]})
    for comparison in comparisons:
        chart(comparison, charts / f"{comparison.name}.png")
    click.echo(f"wrote {json_path} and {len(comparisons)} charts in {charts}, "
               f"{time.monotonic() - began:.0f} s in all")
    for comparison in comparisons:
        for check in comparison.checks:
            if check.bound is not None:
                click.echo(f"  {check.short()}")
    failed = [module for module, bench in benches.items() if bench["error"]]
    if failed:
        raise click.ClickException(f"{', '.join(failed)} failed; see its output above")


if __name__ == "__main__":
    main()
