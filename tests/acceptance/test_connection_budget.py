"""The connection budget: a worker of concurrency N holds at most N + 4 connections, also
when its pool children publish (here: every sign-in email retries once)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import psutil
import psycopg
import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

CONCURRENCY = 4
EMAILS = 16

# Sixteen emails and a clean-up, every result awaited: each pool child runs tasks that query
# the database, publish their retries and store their results.
WORK = f"""
from tasks import delete_old_data, send_sign_in_email
sent = [send_sign_in_email.delay(email=f"user{{i}}@example.com", name="U", code="123456")
        for i in range({EMAILS})]
cleanups = [delete_old_data.delay() for _ in range(4)]
assert all(result.get(timeout=90)["sent"] for result in sent)
for result in cleanups:
    result.get(timeout=60)
"""


class Backend(NamedTuple):
    pid: int
    application_name: str
    client_port: int | None


def _backends(url: str) -> list[Backend]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, application_name, client_port FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()").fetchall()
    return [Backend(pid, name or "tasks and results", port) for pid, name, port in rows]


def _connections(url: str) -> Counter:
    return Counter(backend.application_name for backend in _backends(url))


def _defer_first_attempt(inbox) -> Counter:
    """Make ``inbox`` answer 451 to the first DATA for each recipient (the task retries),
    and accept the second; returns the attempts per recipient."""
    attempts: Counter = Counter()
    accept = inbox.handle_DATA

    async def data(server, session, envelope) -> str:
        recipient = envelope.rcpt_tos[0]
        attempts[recipient] += 1
        if attempts[recipient] == 1:
            return "451 4.3.0 try again later"
        return await accept(server, session, envelope)

    inbox.handle_DATA = data
    return attempts


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _unix_peers() -> dict[int, int]:
    """The inode of the other end of every connected Unix socket, by inode (``ss -x``)."""
    out = subprocess.run(["ss", "-xn"], capture_output=True, text=True, check=True).stdout
    peers = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[-3].isdigit() and fields[-1].isdigit():
            peers[int(fields[-3])] = int(fields[-1])
    return peers


def _clients(backend: Backend, pids: list[int]) -> set[int]:
    """Those of ``pids`` holding the client end of ``backend``'s connection: over TCP, the
    process with its client port; over a Unix socket, those holding the peer of the server
    process's socket. A socket inherited through fork() is held by parent and child."""
    if backend.client_port not in (None, -1):
        return {pid for pid in pids
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.laddr.port == backend.client_port}
    peers = _unix_peers()
    ends = {peers[inode] for inode in _socket_inodes(backend.pid) if inode in peers}
    return {pid for pid in pids if _socket_inodes(pid) & ends}


def test_a_worker_of_concurrency_n_holds_at_most_n_plus_4_connections(
        procfile_env, app_db, smtp_inbox):
    # given a worker of concurrency 4 whose children ran tasks, and published a retry of
    # every sign-in email, the SMTP server having deferred each once
    inbox, _ = smtp_inbox
    attempts = _defer_first_attempt(inbox)
    assert procfile_env.run("release").returncode == 0
    log = procfile_env.start("worker", f"--concurrency={CONCURRENCY}")
    wait_until(lambda: "ready." in log.read_text(), 60, "the worker to be ready")
    work = subprocess.run([sys.executable, "-c", WORK], env=procfile_env.env,
                          capture_output=True, text=True, timeout=180)
    assert work.returncode == 0, work.stderr

    # when it settles (start-up's revoke reads end soon after it is ready)
    budget = CONCURRENCY + 4
    wait_until(lambda: sum(_connections(app_db).values()) <= budget, 30,
               f"at most {budget} connections", lambda: str(_connections(app_db)))

    # then every email went out once, after one deferral, each retry published by a child
    recipients = [f"user{i}@example.com" for i in range(EMAILS)]
    assert attempts == Counter({recipient: 2 for recipient in recipients})
    delivered = Counter(to for envelope in inbox.envelopes for to in envelope.rcpt_tos)
    assert delivered == Counter(recipients)
    assert len(re.findall(r"tasks\.send_sign_in_email\[[^]]+\] retry:", log.read_text())) == EMAILS

    # and it stays within its budget: one connection per child, four in the main process,
    # and no child holds a broker connection of its own
    time.sleep(3)
    held = _connections(app_db)
    assert sum(held.values()) <= budget, held
    assert held["tasks and results"] <= CONCURRENCY, held
    assert "pgjobs-results" not in held, held
    main = psutil.Process(procfile_env.running[-1].pid)
    children = [child.pid for child in main.children(recursive=True)]
    assert len(children) == CONCURRENCY
    broker = [backend for backend in _backends(app_db)
              if backend.application_name == "pgjobs-broker"]
    clients = {backend.pid: _clients(backend, [main.pid, *children]) for backend in broker}
    assert broker and all(main.pid in pids for pids in clients.values()), (main.pid, clients)
