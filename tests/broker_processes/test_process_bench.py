"""The benchmark runs end to end on pgjobs' transport (tiny sizes: a smoke test, no figures)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from process_harness import REPO

pytestmark = pytest.mark.acceptance


def test_bench_measures_the_pgjobs_transport(pg_server_url):
    # Given a PostgreSQL server on which the bench may create its own database
    command = [sys.executable, "-m", "bench.run", "--brokers", "pgjobs", "--tasks", "20",
               "--samples", "5", "--rounds", "1", "--server-url", pg_server_url]

    # When the bench runs with tiny sizes on our transport only
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90)

    # Then it succeeds and prints one row of figures for pgjobs
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("pgjobs ")]
    enqueue, drain, p50, p99, samples = row.split()[1:]
    assert float(enqueue) > 0 and float(drain) > 0 and 0 < float(p50) <= float(p99)
    assert samples == "5"
