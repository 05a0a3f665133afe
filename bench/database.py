"""The benchmark's own stores: a fresh PostgreSQL database per run, and Redis key clean-up."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from broker.urls import redact
from config.urls import normalise_database_url

CREATE_DATABASE = sql.SQL("CREATE DATABASE {}")
DROP_DATABASE = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")


def _admin(server_url: str, statement: sql.Composed) -> None:
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)


@contextmanager
def bench_database(server_url: str, run_id: str) -> Iterator[str]:
    """A new database ``pgjobs_bench_<run_id>`` with every migration applied; dropped after."""
    from config.migrate import upgrade

    try:
        server_url = normalise_database_url(server_url)
    except ValueError as error:
        raise click.ClickException(f"--server-url {error}") from None
    name = sql.Identifier(f"pgjobs_bench_{run_id}")
    try:
        _admin(server_url, CREATE_DATABASE.format(name))
    except psycopg.Error as error:
        raise click.ClickException(
            f"cannot create the bench database on {redact(server_url)}: "
            f"{str(error).strip().splitlines()[0]}; check --server-url") from None
    try:
        url = make_url(server_url).set(database=f"pgjobs_bench_{run_id}")
        database_url = url.render_as_string(hide_password=False)
        upgrade(database_url)
        yield database_url
    finally:
        _admin(server_url, DROP_DATABASE.format(name))


def redis_reachable(redis_url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(redis_url, socket_timeout=5).ping())
    except (redis.RedisError, ValueError):
        return False


def delete_redis_keys(redis_url: str, prefix: str) -> None:
    """Remove every key this run's Redis broker made (they all start with ``prefix``)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


@contextmanager
def durable_redis(timeout: float = 10.0) -> Iterator[str | None]:
    """The URL of a Redis of this run's own that writes each command to its append-only file
    and flushes it to disk before answering (``appendfsync always``): as durable as a
    PostgreSQL commit (the Redis the benches share here saves nothing to disk at all).
    None when ``redis-server`` is not installed. Stopped, and its files removed, after."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="pgjobs-bench-redis-") as folder:
        port = _free_port()
        url = f"redis://127.0.0.1:{port}/0"
        process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", folder,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while not redis_reachable(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {url}")
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rabbitmq_reachable(amqp_url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(amqp_url, connect_timeout=5) as conn:
            conn.connect()
        return True
    except OSError:
        return False


def delete_rabbitmq_queue(amqp_url: str, queue: str) -> None:
    """Remove this run's queue from RabbitMQ (it is durable, so it would outlive the run)."""
    from kombu import Connection

    with Connection(amqp_url, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(queue)
