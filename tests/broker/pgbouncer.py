"""A real PgBouncer in transaction mode in front of the test's PostgreSQL (Debian's
``pgbouncer``; ``.ci/run`` installs it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.daemons import unprivileged_user, wait_ready

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def require() -> None:
    """Fail in CI, skip elsewhere, when PgBouncer is not installed."""
    if os.path.exists(BINARY):
        return
    if os.environ.get("CI"):
        pytest.fail("pgbouncer is not installed: .ci/run installs Debian's pgbouncer")
    pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(server: dict[str, str], port: int, pool_size: int) -> str:
    target = " ".join(f"{key}={server[key]}" for key in ("host", "port", "dbname", "user")
                      if server.get(key))
    return "\n".join([
        "[databases]",
        f"* = {target}",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = any",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "max_client_conn = 100",
        "ignore_startup_parameters = extra_float_digits,application_name",
        "",
    ])


@contextmanager
def pgbouncer(db_url: str, pool_size: int = 1) -> Iterator[str]:
    """Run PgBouncer for ``db_url``'s database; yields the URL that goes through it.

    With one server connection, every client's transactions share it, so anything that
    relies on session state (prepared statements, SET, LISTEN) fails at once."""
    require()
    server = conninfo_to_dict(db_url)
    run_as = unprivileged_user(server.get("host", ""))
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgjobs-pgbouncer-"))
    folder.chmod(0o755)  # PgBouncer drops root for another user, which must read it
    config = folder / "pgbouncer.ini"
    config.write_text(_config(server, port, pool_size))
    config.chmod(0o644)
    user = ["-u", run_as] if run_as else []
    log = folder / "pgbouncer.log"
    with log.open("wb") as output:
        process = subprocess.Popen([BINARY, *user, str(config)], stdout=output,
                                   stderr=subprocess.STDOUT)
    url = f"postgresql://{server.get('user') or 'postgres'}@127.0.0.1:{port}/{server['dbname']}"
    try:
        wait_ready(url, process, log, "pgbouncer")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
