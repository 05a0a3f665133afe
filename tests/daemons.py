"""Private daemons for tests (PgBouncer, a PostgreSQL of their own): who they run as, and
waiting until they answer."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import psycopg


def unprivileged_user(host: str) -> str | None:
    """The user a daemon reaching ``host`` runs as when the tests run as root (PostgreSQL and
    PgBouncer refuse root); None otherwise. For a server on a Unix socket (the embedded one),
    that is the owner of the socket's folder, the only user that may enter it; the folders
    above it are opened to others for traversal."""
    if os.geteuid() != 0:
        return None
    if not host.startswith("/"):
        return "postgres"
    socket_dir = Path(host)
    for folder in socket_dir.parents:
        if folder.stat().st_uid == 0:
            folder.chmod(folder.stat().st_mode | 0o001)
    return pwd.getpwuid(socket_dir.stat().st_uid).pw_name


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, name: str,
               timeout: float = 10) -> None:
    """Wait until ``url`` answers a query; RuntimeError with the tail of ``name``'s ``log``
    when ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text().strip()}")
        try:
            with psycopg.connect(url, connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} is not ready: {log.read_text()[-2000:]}") from error
            time.sleep(0.1)
