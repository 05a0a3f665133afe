"""Hand one message to an SMTP server, sorting failures into transient and permanent.

Transient (the task retries): the server cannot be reached, drops the connection or
times out, or answers 4xx. Permanent (the task fails at once): any 5xx reply,
including a refused login, a TLS certificate that does not verify, or a feature the
server lacks. Error messages name the server and its reply, never the credentials.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from config.settings import SmtpTarget
from tasks.errors import PermanentEmailError, TransientEmailError

TIMEOUT_SECONDS = 30.0


def deliver(message: EmailMessage, target: SmtpTarget, timeout: float = TIMEOUT_SECONDS) -> None:
    """Send ``message`` over SMTP; raise TransientEmailError or PermanentEmailError on failure."""
    server = f"{target.host}:{target.port}"
    try:
        _send(message, target, timeout)
    except smtplib.SMTPRecipientsRefused as error:
        raise _refused(server, [code for code, _ in error.recipients.values()], error) from None
    except smtplib.SMTPResponseException as error:
        raise _refused(server, [error.smtp_code], error) from None
    except smtplib.SMTPServerDisconnected as error:
        reason = _describe(error)
        raise TransientEmailError(f"SMTP server {server} disconnected: {reason}") from None
    except (smtplib.SMTPException, ssl.SSLCertVerificationError) as error:
        raise PermanentEmailError(f"SMTP server {server} cannot be used: {error}") from None
    except OSError as error:  # refused, reset, unreachable, timed out, name not resolved
        raise TransientEmailError(f"SMTP server {server} unreachable: {_describe(error)}") from None


def _send(message: EmailMessage, target: SmtpTarget, timeout: float) -> None:
    context = ssl.create_default_context()
    if target.implicit_tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            target.host, target.port, timeout=timeout, context=context
        )
    else:
        client = smtplib.SMTP(target.host, target.port, timeout=timeout)
    with client:
        if target.starttls:
            client.starttls(context=context)
        if target.username:
            client.login(target.username, target.password or "")
        client.send_message(message)


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
