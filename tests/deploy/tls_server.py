"""A private PostgreSQL that speaks only TLS, with a certificate authority made for the test
(``trustme``): its certificate names ``localhost`` and 127.0.0.1, and its pg_hba.conf refuses
every connection that is not TLS. Debian's PostgreSQL binaries run it (the embedded server is
built without OpenSSL)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.daemons import unprivileged_user, wait_ready
from tests.tasks.task_helpers import free_port

BINARIES = Path("/usr/lib/postgresql")
HBA = """\
hostssl all all 127.0.0.1/32 trust
hostnossl all all 0.0.0.0/0 reject
"""


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca_file: Path
    """The authority that signed the server's certificate, as PEM."""

    def url(self, database: str = "postgres", ca_file: Path | None = None,
            password: str | None = None) -> str:
        """A URL that verifies the server against ``ca_file`` (default: the right one). The
        server trusts every user on 127.0.0.1: any ``password`` is accepted."""
        user = f"postgres:{password}" if password else "postgres"
        return (f"postgresql://{user}@localhost:{self.port}/{database}"
                f"?sslmode=verify-full&sslrootcert={ca_file or self.ca_file}")


def bindir() -> Path | None:
    """The newest installed PostgreSQL's binaries, if any."""
    found = sorted(BINARIES.glob("*/bin/postgres"), key=lambda path: int(path.parts[-3]))
    return found[-1].parent if found else None


def require() -> Path:
    """The binaries' folder; fail in CI, skip elsewhere, when PostgreSQL is not installed."""
    found = bindir()
    if found is not None:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"no PostgreSQL binaries under {BINARIES}: install Debian's postgresql")
    pytest.skip(f"no PostgreSQL binaries under {BINARIES} (apt-get install postgresql)")


@contextmanager
def tls_postgres() -> Iterator[TlsServer]:
    """Run a fresh cluster on a free port, with TLS only; removed afterwards."""
    binaries = require()
    run_as = unprivileged_user("127.0.0.1")  # initdb and postgres refuse to run as root
    folder = Path(tempfile.mkdtemp(prefix="pgjobs-tls-pg-"))
    folder.chmod(0o755)
    try:
        ca_file = _certificates(folder, run_as)
        data = _initdb(binaries, folder, run_as)
        port = free_port()
        log = folder / "postgres.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(binaries / "postgres"), "-D", str(data), "-c", f"port={port}",
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "ssl=on", "-c", f"ssl_cert_file={folder / 'server.pem'}",
                 "-c", f"ssl_key_file={folder / 'server.key'}", "-c", "fsync=off"],
                user=run_as, cwd=folder, stdout=output, stderr=subprocess.STDOUT)
        server = TlsServer(port, ca_file)
        try:
            wait_ready(server.url(), process, log, "postgres")
            yield server
        finally:
            process.send_signal(signal.SIGINT)  # fast shutdown: clients are cut off
            process.wait(30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _certificates(folder: Path, owner: str | None) -> Path:
    """Write the server's certificate and key (readable by ``owner`` only) and the authority's
    certificate into ``folder``; returns the latter."""
    authority = trustme.CA()
    issued = authority.issue_cert("localhost", "127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    key = folder / "server.key"
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    if owner:
        shutil.chown(key, owner)
    authority.cert_pem.write_to_path(str(folder / "ca.pem"))
    return folder / "ca.pem"


def _initdb(binaries: Path, folder: Path, owner: str | None) -> Path:
    data = folder / "data"
    data.mkdir(mode=0o700)
    if owner:
        shutil.chown(data, owner)
    subprocess.run([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                   user=owner, cwd=folder, check=True, capture_output=True)
    (data / "pg_hba.conf").write_text(HBA)
    return data
