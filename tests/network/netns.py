"""A second "host" on this machine: a network namespace joined to this one by a veth link that
a test can cut, and a TCP relay on this side of the link to the test's PostgreSQL.

Processes started with :meth:`Host.command` run inside the namespace and reach PostgreSQL only
through the link, so ``cut()`` makes their connections half-open exactly as a dead network
does: a firewall rule inside the namespace drops every packet that arrives, so nothing is
closed or reset and no send fails (taking the link down, or dropping outgoing packets, makes
sends fail at once, which is kinder than a dead network). Needs root,
``ip netns`` and ``nft`` (Debian's nftables); :func:`require` skips a test without them, and
fails it in CI, where ``.ci/run`` installs nftables.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and (
        shutil.which("nft") is not None)


def require() -> None:
    """Skip the calling test where no host can be made here; fail it in CI (``CI`` set),
    which must run it."""
    if available():
        return
    reason = "network namespaces need root, ip (iproute2) and nft (nftables)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs nftables when it runs as root")
    pytest.skip(reason)


@contextmanager
def linked_host(database_url: str) -> Iterator[tuple[Host, Relay]]:
    """A :class:`Host` and a :class:`Relay` on its link to ``database_url``'s server; both
    gone afterwards. Stop the processes run inside the host before leaving."""
    host = Host()
    try:
        relay = Relay(host.gateway, database_url)
        try:
            yield host, relay
        finally:
            relay.close()
    finally:
        host.destroy()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Host:
    """A network namespace with one veth link to this namespace."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name, self.outer, self.inner = f"pgj-{tag}", f"vh{tag}", f"vn{tag}"
        octets = secrets.token_bytes(2)
        self.subnet = f"10.{100 + octets[0] % 100}.{octets[1]}"
        self.gateway = f"{self.subnet}.1"  # this side of the link
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            _ip("link", "set", self.inner, "netns", self.name)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            self._inside("addr", "add", f"{self.subnet}.2/30", "dev", self.inner)
            self._inside("link", "set", self.inner, "up")
            self._inside("link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise

    def _inside(self, *args: str) -> None:
        _ip("netns", "exec", self.name, "ip", *args)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Drop every packet arriving at this host: what it sends gets no answer, not even
        an acknowledgement; nothing is closed."""
        self._nft("add", "table", "inet", "cut")
        self._nft("add", "chain", "inet", "cut", "input",
                  "{ type filter hook input priority 0; policy drop; }")

    def lose(self, ports: list[int]) -> None:
        """Drop for good every packet arriving at this host's local TCP ``ports``: those
        connections are dead (a failover, a NAT that forgot them) while new ones work."""
        self._nft("add", "table", "inet", "lost")
        self._nft("add", "chain", "inet", "lost", "input",
                  "{ type filter hook input priority 0; policy accept; }")
        listed = ", ".join(str(port) for port in ports)
        self._nft("add", "rule", "inet", "lost", "input", "tcp", "dport", f"{{ {listed} }}",
                  "drop")

    def mend(self) -> None:
        self._nft("delete", "table", "inet", "cut")

    def _nft(self, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "nft", *args], check=True,
                       capture_output=True)

    def destroy(self) -> None:
        with suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.outer)
        with suppress(subprocess.CalledProcessError):
            _ip("netns", "del", self.name)


class Relay:
    """Forwards TCP connections made to ``address`` to the PostgreSQL server of
    ``database_url`` (TCP or Unix socket), byte for byte."""

    def __init__(self, host: str, database_url: str) -> None:
        self._params = conninfo_to_dict(database_url)
        self._listener = socket.create_server((host, 0))
        self.address = self._listener.getsockname()
        self._sockets: list[socket.socket] = []
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        """``database_url`` as reached through this relay (a URL, as brokers take them)."""
        host, port = self.address
        user = quote(self._params.get("user") or "postgres", safe="")
        return f"postgresql://{user}@{host}:{port}/{quote(self._params['dbname'], safe='')}"

    def client_ports(self) -> list[int]:
        """The remote ports of every connection relayed so far."""
        with self._lock:
            return [sock.getpeername()[1] for sock in self._clients if sock.fileno() >= 0]

    def _upstream(self) -> socket.socket:
        host = self._params.get("host") or "/var/run/postgresql"
        port = int(self._params.get("port") or 5432)
        if host.startswith("/"):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(f"{host}/.s.PGSQL.{port}")
            return upstream
        return socket.create_connection((host, port))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = self._upstream()
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
                self._clients.append(client)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with suppress(OSError):
        target.shutdown(socket.SHUT_WR)
