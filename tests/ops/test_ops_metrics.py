"""``pgjobs metrics``: a real server process, scraped over HTTP."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from ops_helpers import one_line_error
from processes import BIN
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql as pgsql
from sqlalchemy.engine import make_url

from tests.polling import wait_until
from tests.tasks.task_helpers import free_port

pytestmark = pytest.mark.acceptance

SEED = [
    "INSERT INTO pgjobs_broker_message (queue, visible_at, payload)"
    " SELECT 'mail', now() - interval '20 seconds', '{}' FROM generate_series(1, 4)",
    "INSERT INTO pgjobs_broker_message (queue, visible_at, delayed, payload)"
    " VALUES ('mail', now() + interval '1 hour', true, '{}')",
    "INSERT INTO celery_taskmeta (task_id, name, status, date_done) VALUES"
    " ('a', 'tasks.x', 'FAILURE', now() AT TIME ZONE 'UTC'),"
    " ('b', 'tasks.x', 'SUCCESS', now() AT TIME ZONE 'UTC'),"
    " ('c', 'tasks.x', 'SUCCESS', now() AT TIME ZONE 'UTC'),"
    " ('old', 'tasks.x', 'SUCCESS', (now() AT TIME ZONE 'UTC') - interval '2 hours')",
]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def serve(processes, port: int):
    server = processes.start("metrics", str(BIN / "pgjobs"), "metrics", "--port", str(port),
                             "--address", "127.0.0.1")
    wait_until(lambda: "serving metrics" in server.text(), 30, "the metrics server",
               server.tail)
    return server


def test_a_scrape_reads_queues_workers_beat_and_results(processes, sql):
    # Given messages in two states and stored results, one of them older than the window
    for statement in SEED:
        sql(statement)
    port = free_port()
    serve(processes, port)

    # When Prometheus scrapes
    samples = scrape(port)

    # Then the metrics say what the database holds
    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("pgjobs_database_up") == 1
    assert value("pgjobs_queue_messages", queue="mail", state="ready") == 4
    assert value("pgjobs_queue_messages", queue="mail", state="scheduled") == 1
    assert value("pgjobs_queue_messages", queue="mail", state="in_flight") == 0
    assert value("pgjobs_queue_messages", queue="mail", state="dead") == 0
    assert value("pgjobs_queue_oldest_ready_age_seconds", queue="mail") >= 20
    assert value("pgjobs_workers_live") == 0
    assert value("pgjobs_beat_schedule_lag_seconds") == 0
    assert value("pgjobs_task_results", task="tasks.x", state="SUCCESS") == 2
    assert value("pgjobs_task_results", task="tasks.x", state="FAILURE") == 1
    assert not any(name == "pgjobs_beat_leader" for name, _ in samples)


@contextmanager
def outage(server_url: str, database_url: str) -> Iterator[None]:
    """The database refuses connections, and its open ones are ended, until the block ends."""
    name = make_url(database_url).database
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            pgsql.Identifier(name)))
        try:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = %s AND pid <> pg_backend_pid()", [name])
            yield
        finally:
            conn.execute(pgsql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                pgsql.Identifier(name)))


def test_an_outage_while_serving_reads_as_down_until_it_ends(processes, app_db, pg_server_url):
    # Given a metrics server that started on a reachable database
    port = free_port()
    server = serve(processes, port)
    assert scrape(port)[("pgjobs_database_up", ())] == 1

    # When the database becomes unreachable, Then the server keeps serving, reading as down
    with outage(pg_server_url, app_db):
        assert scrape(port) == {("pgjobs_database_up", ()): 0}

    # And once it is back, the server reconnects
    wait_until(lambda: scrape(port)[("pgjobs_database_up", ())] == 1, 30,
               "the metrics server to reconnect", server.tail)


@pytest.mark.parametrize(("database", "advice"), [
    ("no server", "check that PostgreSQL is running"),
    ("no such database", "create that database"),
])
def test_an_unreachable_database_at_start_is_one_line_and_exit_1(processes, pg_server_url,
                                                                 database, advice):
    # Given a DATABASE_URL that cannot be reached: no server there, or no such database
    url = ("postgresql://u:secret@127.0.0.1:1/db" if database == "no server"
           else make_url(pg_server_url).set(database="pgjobs_no_such_database", password="secret")
           .render_as_string(hide_password=False))
    env = {**processes.env, "DATABASE_URL": url}

    # When the metrics server starts (a server that kept running would time out here)
    result = subprocess.run([str(BIN / "pgjobs"), "metrics", "--port", str(free_port()),
                             "--address", "127.0.0.1", "--no-events"], env=env,
                            capture_output=True, text=True, timeout=60)

    # Then it stops at once with the usual one line, and never served
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: DATABASE_URL: cannot connect to postgresql://")
    assert advice in line
    assert "secret" not in line and "serving metrics" not in result.stdout


@pytest.mark.parametrize("window", ["nan", "inf", "0", "1e308"])
def test_a_results_window_out_of_range_is_refused_at_start(cli, window):
    line = one_line_error(cli("metrics", "--results-window", window, "--port", str(free_port()),
                              "--address", "127.0.0.1"))
    assert "'--results-window'" in line and "is not in the range 1<=x<=31622400" in line


def test_a_port_in_use_is_one_line(cli, processes):
    port = free_port()
    serve(processes, port)
    line = one_line_error(cli("metrics", "--port", str(port), "--address", "127.0.0.1"))
    assert f"cannot serve metrics on 127.0.0.1:{port}" in line


def test_task_outcomes_and_run_times_come_from_worker_events(processes):
    from tasks import send_sign_in_email

    # Given a worker (events off) and the metrics server, which turns its events on
    worker = processes.worker("measured")
    port = free_port()
    serve(processes, port)
    wait_until(lambda: "Events of group {task} enabled by remote" in worker.text(), 60,
               "the metrics server to turn the worker's events on", processes.logs)

    # When one task succeeds and one fails
    send_sign_in_email.apply_async(kwargs={"email": "ada@example.com", "name": "A", "code": "1"})
    send_sign_in_email.apply_async(kwargs={"email": "no-address", "name": "A", "code": "1"})

    # Then each outcome is counted once, and the run time of the success is observed
    task = (("task", "tasks.send_sign_in_email"),)
    counted = wait_until(
        lambda: (samples := scrape(port)).get(
            ("pgjobs_task_events_total", (("event", "failed"), *task))) and samples, 60,
        "the failure to be counted", processes.logs)
    assert counted[("pgjobs_task_events_total", (("event", "succeeded"), *task))] == 1
    assert counted[("pgjobs_task_events_total", (("event", "failed"), *task))] == 1
    assert counted[("pgjobs_task_runtime_seconds_count", task)] == 1
    assert counted[("pgjobs_task_runtime_seconds_sum", task)] > 0
