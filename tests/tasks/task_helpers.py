"""Helpers for the task tests: an SMTP handler that records what it gets, free ports."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from celery.signals import task_retry

SMTP_USER = "mailer"
SMTP_PASSWORD = "s3cret-Pa55word"


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening on it once this returns."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps accepted messages, or answers ``reply`` to DATA."""

    reply: str | None = None
    attempts: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.time() of each accepted DATA

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        self.attempts += 1
        if self.reply:
            return self.reply
        self.envelopes.append(envelope)
        self.arrivals.append(time.time())
        return "250 Message accepted"

    @property
    def messages(self) -> list[EmailMessage]:
        return [message_from_bytes(e.original_content, policy=policy.default)
                for e in self.envelopes]


class Gate:
    """Holds the first SMTP session that reaches a step (RCPT or DATA) until ``opened`` is
    set; ``reached`` is set while it holds. Later sessions go through."""

    def __init__(self) -> None:
        self.reached, self.opened = threading.Event(), threading.Event()

    async def pass_through(self) -> None:
        if self.reached.is_set():
            return
        self.reached.set()
        while not self.opened.is_set():
            await asyncio.sleep(0.01)


def hold_first(mailbox: Mailbox, step: str) -> Gate:
    """Make ``mailbox`` hold the first session at ``step`` ("RCPT" or "DATA")."""
    gate, accept_data = Gate(), mailbox.handle_DATA

    async def rcpt(server, session, envelope, address, options) -> str:
        await gate.pass_through()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def data(server, session, envelope) -> str:
        await gate.pass_through()
        return await accept_data(server, session, envelope)

    if step == "RCPT":
        mailbox.handle_RCPT = rcpt
    else:
        mailbox.handle_DATA = data
    return gate


def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    """Accept exactly SMTP_USER / SMTP_PASSWORD."""
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER
          and auth_data.password.decode() == SMTP_PASSWORD)
    return AuthResult(success=ok, handled=False)


@contextmanager
def recorded_retries() -> Iterator[list[float]]:
    """Collect the countdown of every retry requested while the block runs.

    An eager ``apply()`` runs each retry at once, in place, so the countdowns are
    what a worker would have waited.
    """
    countdowns: list[float] = []

    def record(sender: object = None, reason: object = None, **_: object) -> None:
        countdowns.append(getattr(reason, "when", None))

    task_retry.connect(record, weak=False)
    try:
        yield countdowns
    finally:
        task_retry.disconnect(record)
