"""Hand one message to an SMTP server, sorting failures into transient and permanent.

Transient (the task retries): the server cannot be reached, drops the connection or
times out, or answers 4xx. Permanent (the task fails at once): any 5xx reply,
including a refused login, a TLS certificate that does not verify, or a feature the
server lacks. Error messages name the server and its reply, never the credentials.

Every blocking step (connect, TLS handshake, each command and reply) waits at most
``timeout``, and the whole exchange ends by ``deadline``: once it has passed, nothing more
is sent, so a message that was not handed over by then never will be by this attempt.
:mod:`tasks.sent_log` sizes its lease on that bound.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from contextlib import closing, suppress
from email.message import EmailMessage
from typing import Any

from config.settings import SmtpTarget
from tasks.errors import PermanentEmailError, TransientEmailError

# The longest any one blocking step may take.
TIMEOUT_SECONDS = 30.0
# The longest the whole exchange may take: room for two steps at their limit (a slow
# greeting and a slow reply to the message), the others being round trips of milliseconds.
EXCHANGE_TIMEOUT_SECONDS = 2 * TIMEOUT_SECONDS


class _DeadlinePassed(smtplib.SMTPServerDisconnected):
    # A kind of disconnection, so that smtplib's own clean-up (RSET after a refusal, QUIT)
    # treats it as one and leaves the server's reply, if any, as the error.
    pass


def deliver(message: EmailMessage, target: SmtpTarget, timeout: float = TIMEOUT_SECONDS,
            deadline: float | None = None) -> None:
    """Send ``message`` over SMTP; raise TransientEmailError or PermanentEmailError on failure.

    ``deadline`` is a :func:`time.monotonic` instant; by default EXCHANGE_TIMEOUT_SECONDS
    from now.
    """
    server = f"{target.host}:{target.port}"
    if deadline is None:
        deadline = time.monotonic() + EXCHANGE_TIMEOUT_SECONDS
    try:
        _send(message, target, timeout, deadline)
    except smtplib.SMTPRecipientsRefused as error:
        raise _refused(server, [code for code, _ in error.recipients.values()], error) from None
    except smtplib.SMTPResponseException as error:
        raise _refused(server, [error.smtp_code], error) from None
    except _DeadlinePassed as error:
        raise TransientEmailError(f"SMTP server {server} timed out: {error}") from None
    except smtplib.SMTPServerDisconnected as error:
        reason = _describe(error)
        raise TransientEmailError(f"SMTP server {server} disconnected: {reason}") from None
    except (smtplib.SMTPException, ssl.SSLCertVerificationError) as error:
        raise PermanentEmailError(f"SMTP server {server} cannot be used: {error}") from None
    except OSError as error:  # refused, reset, unreachable, timed out, name not resolved
        raise TransientEmailError(f"SMTP server {server} unreachable: {_describe(error)}") from None


def _send(message: EmailMessage, target: SmtpTarget, timeout: float, deadline: float) -> None:
    context = ssl.create_default_context()
    bounds = {"timeout": timeout, "deadline": deadline}
    if target.implicit_tls:
        client: smtplib.SMTP = _BoundedSMTPSSL(target.host, target.port, context=context,
                                               **bounds)
    else:
        client = _BoundedSMTP(target.host, target.port, **bounds)
    with closing(client):
        if target.starttls:
            client.starttls(context=context)
        if target.username:
            client.login(target.username, target.password or "")
        client.send_message(message)
        # The message is accepted: however the goodbye goes, it must not fail the
        # attempt, or the retry would send the email a second time.
        with suppress(smtplib.SMTPException, OSError):
            client.quit()


class _Bounded:
    """Mixin for smtplib clients: each blocking step waits at most the per-step timeout and
    never past the deadline; past it, the connection is dropped before anything is sent."""

    def __init__(self, host: str, port: int, *, timeout: float, deadline: float,
                 **options: Any) -> None:
        self._step_timeout, self._deadline = timeout, deadline
        super().__init__(host, port, timeout=timeout, **options)

    def _budget(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            self.close()
            raise _DeadlinePassed("the exchange ran past its deadline")
        return min(self._step_timeout, left)

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        return super()._get_socket(host, port, self._budget())

    def send(self, data: Any) -> None:
        budget = self._budget()
        if self.sock:
            self.sock.settimeout(budget)
        super().send(data)

    def getreply(self) -> tuple[int, bytes]:
        budget = self._budget()
        if self.sock:
            self.sock.settimeout(budget)
        return super().getreply()


class _BoundedSMTP(_Bounded, smtplib.SMTP):
    pass


class _BoundedSMTPSSL(_Bounded, smtplib.SMTP_SSL):
    pass


def _refused(server: str, codes: list[int], error: Exception) -> Exception:
    reply = _describe(error)
    if codes and all(400 <= code < 500 for code in codes):
        return TransientEmailError(f"SMTP server {server} deferred: {reply}")
    return PermanentEmailError(f"SMTP server {server} refused: {reply}")


def _describe(error: Exception) -> str:
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        return f"{error.smtp_code} {text}"
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return "; ".join(
            f"{code} {reply.decode(errors='replace')}" for code, reply in error.recipients.values()
        )
    return str(error) or type(error).__name__
