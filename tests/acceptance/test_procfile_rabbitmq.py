"""BROKER_URL on RabbitMQ: the broker moves, results and the schedule stay in PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from kombu import Connection

from tests.acceptance.deploy_scenario import run_deployment

pytestmark = pytest.mark.acceptance

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"RabbitMQ is needed on 127.0.0.1:5672 in CI: {reason}")
    pytest.skip(reason)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A virtual host of its own on the machine's RabbitMQ, so no other queue interferes."""
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not installed")
    vhost = f"pgjobs-test-{uuid.uuid4().hex[:8]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        with Connection(f"{RABBITMQ}/{vhost}", connect_timeout=5) as conn:
            conn.connect()
    except (subprocess.SubprocessError, OSError) as error:
        _unavailable(f"RabbitMQ is not reachable ({error})")
    try:
        yield f"{RABBITMQ}/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True,
                       timeout=60)


def test_procfile_worker_and_beat_run_with_the_broker_on_rabbitmq(
        procfile_env, smtp_inbox, rabbitmq_url, app_db):
    inbox, _ = smtp_inbox
    procfile_env.env["BROKER_URL"] = rabbitmq_url
    # a producer's result and every email of a worker and a beat, with RabbitMQ as broker
    worker_log = run_deployment(procfile_env, inbox)

    # and the messages went through RabbitMQ, not the PostgreSQL broker
    assert "transport:   amqp://guest:**@127.0.0.1:5672/" in worker_log.read_text()
    with psycopg.connect(app_db, autocommit=True) as conn:
        consumers = conn.execute("SELECT count(*) FROM pgjobs_broker_consumer").fetchone()
        results = conn.execute("SELECT count(*) FROM celery_taskmeta").fetchone()
    assert consumers == (0,)
    assert results[0] >= 7
