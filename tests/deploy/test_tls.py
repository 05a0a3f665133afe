"""pgjobs on a PostgreSQL that accepts TLS only, with DATABASE_URL verifying its certificate
(``sslmode=verify-full``): the Procfile's release, worker and beat, and a producer awaiting a
result; and a server certificate from another authority refused in one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trustme

from tests.acceptance.conftest import BIN, Processes
from tests.acceptance.conftest import smtp_inbox as smtp_inbox  # a fixture
from tests.acceptance.deploy_scenario import run_deployment
from tests.deploy.tls_server import TlsServer, tls_postgres
from tests.test_database_errors import one_line_failure

pytestmark = pytest.mark.acceptance

DATABASE = "pgjobs"
PASSWORD = "hunter2"  # the server trusts anyone: a password that must show up nowhere
SESSIONS = """
SELECT a.application_name, s.ssl, s.version FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
WHERE a.datname = %s AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
"""


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    with tls_postgres() as server:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")  # noqa: S608 - a constant
        yield server


@pytest.fixture
def stranger_ca(tmp_path: Path) -> Path:
    """An authority that did not sign the server's certificate."""
    path = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def processes(tls_server: TlsServer, stranger_ca: Path, tmp_path: Path) -> Iterator[Processes]:
    """Processes whose libpq defaults are plain text and the wrong authority: a connection
    that lost the URL's sslmode or sslrootcert on the way would be refused."""
    env = {**os.environ, "DATABASE_URL": tls_server.url(DATABASE, password=PASSWORD),
           "PGSSLMODE": "disable", "PGSSLROOTCERT": str(stranger_ca),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    value = Processes(env=env, logdir=tmp_path)
    try:
        yield value
    finally:
        value.stop_all()


def sessions(server: TlsServer) -> list[tuple[str, bool, str]]:
    """(application_name, ssl, TLS version) of every other session on the pgjobs database."""
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return conn.execute(SESSIONS, (DATABASE,)).fetchall()


def test_worker_beat_and_producer_verify_the_server_certificate(
        tls_server: TlsServer, processes: Processes, smtp_inbox) -> None:
    inbox, smtp_url = smtp_inbox
    processes.env["SMTP_URL"] = smtp_url

    # Given the release phase, a worker, a beat and a producer on DATABASE_URL with TLS,
    # every email went out once and the awaited result came back on a NOTIFY
    worker_log = run_deployment(processes, inbox)

    # Then every connection the worker and beat hold is TLS
    found = sessions(tls_server)
    names = {name for name, _, _ in found}
    assert {"pgjobs-broker", "pgjobs-broker-listen"} <= names, found
    assert any(name.startswith("pgjobs-beat:") for name in names), found
    assert all(ssl and version.startswith("TLS") for _, ssl, version in found), found
    # And none of theirs fell back to libpq's defaults (refused, then retried or given up)
    logs = "\n".join(log.read_text() for log in worker_log.parent.glob("*.log"))
    assert "no encryption" not in logs and "certificate verify failed" not in logs, logs
    assert PASSWORD not in logs


@pytest.mark.parametrize("role", ["release", "worker"])
def test_a_certificate_from_another_authority_is_refused_in_one_line(
        tls_server: TlsServer, processes: Processes, stranger_ca: Path, role: str) -> None:
    # Given DATABASE_URL trusting an authority that did not sign the server's certificate
    processes.env["DATABASE_URL"] = tls_server.url(DATABASE, ca_file=stranger_ca,
                                                   password=PASSWORD)

    # When the schema is migrated, or a worker starts
    line = one_line_failure(processes.run(role))

    # Then it stops with one line naming the failed check and what to fix, no password
    assert "certificate verify failed" in line
    assert line.endswith("check sslrootcert in DATABASE_URL: it must be the CA certificate "
                         "that signed the server's")
    assert PASSWORD not in line


@pytest.mark.parametrize(("change", "error", "advice"), [
    (lambda url: url.replace("@localhost:", "@pgjobs.invalid:") + "&hostaddr=127.0.0.1",
     'does not match host name "pgjobs.invalid"',
     "use a host name in DATABASE_URL that the server's certificate gives"),
    (lambda url: url.replace("sslmode=verify-full", "sslmode=disable"),
     "pg_hba.conf rejects connection", "connect with TLS: add sslmode=verify-full and "
     "sslrootcert to DATABASE_URL"),
], ids=["another-host-name", "no-tls"])
def test_migrate_says_what_to_fix_when_tls_fails(
        tls_server: TlsServer, processes: Processes, change, error: str, advice: str) -> None:
    # Given DATABASE_URL naming a host the certificate does not, or asking for no TLS
    processes.env["DATABASE_URL"] = change(tls_server.url(DATABASE, password=PASSWORD))

    # When the schema is migrated
    line = one_line_failure(processes.run("release"))

    # Then one line says what failed and what to fix, without the password
    assert error in line
    assert line.endswith(advice)
    assert PASSWORD not in line
