"""Every benchmark module imports and offers its command: a broken import would only show
when someone next runs the benchmark."""

from __future__ import annotations

import importlib

import click
import pytest

BENCHES = ["bench.run", "bench.pools", "bench.results", "bench.bulk", "bench.status",
           "bench.scale", "bench.producers", "bench.idle", "bench.suite"]


@pytest.mark.parametrize("name", BENCHES)
def test_the_benchmark_imports_and_offers_a_command(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module.main, click.Command)
