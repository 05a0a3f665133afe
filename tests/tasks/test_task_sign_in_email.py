"""tasks.send_sign_in_email against a real SMTP server and a real PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time

import psycopg
import pytest
from task_helpers import SMTP_PASSWORD, SMTP_USER, Mailbox, free_port, recorded_retries

from config.settings import SmtpTarget, get_settings
from tasks import send_sign_in_email
from tasks.errors import InvalidAddressError, PermanentEmailError, TransientEmailError
from tasks.message import sign_in_message
from tasks.sign_in import MAX_RETRIES, RETRY_BACKOFF_MAX_SECONDS, RETRY_BACKOFF_SECONDS
from tasks.smtp import deliver

KWARGS = {"email": "ada@example.com", "name": "Ada <Lovelace>", "code": "493 817"}


def sent_rows(db_url: str) -> list[tuple[str, str, str]]:
    """Every row of the sent-email log: (task id, recipient, "sent" or "sending")."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT task_id, recipient, CASE WHEN lease_until IS NULL THEN 'sent' ELSE 'sending'"
            " END FROM pgjobs_sent_email ORDER BY task_id").fetchall()


def test_email_arrives_with_text_and_html_parts_carrying_the_code(mailbox, app_db):
    # Given an SMTP server; when the task runs
    result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-arrives")

    # Then one email arrived, addressed to the recipient, with a text and an HTML part
    assert result.successful(), result.traceback
    [message] = mailbox.messages
    assert message["To"].addresses[0].addr_spec == "ada@example.com"
    assert message["Subject"] == "Your sign-in code"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "493 817" in text and "Ada <Lovelace>" in text
    assert "493 817" in html and "Ada &lt;Lovelace&gt;" in html and "<Lovelace>" not in html
    # And it is recorded as sent under its task id
    assert sent_rows(app_db) == [("t-arrives", "ada@example.com", "sent")]
    assert result.result["sent"] is True


def test_same_task_id_twice_sends_one_email(mailbox, app_db):
    # Given a task that already sent its email
    send_sign_in_email.apply(kwargs=KWARGS, task_id="t-twice").get()

    # When the same task id is delivered again
    second = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-twice")

    # Then it succeeds without sending a second email
    assert second.result["sent"] is False
    assert len(mailbox.messages) == 1
    assert len(sent_rows(app_db)) == 1


def test_5xx_reply_fails_at_once_without_retry(mailbox, app_db):
    # Given a server that rejects the message permanently
    mailbox.reply = "550 5.7.1 Mailbox unavailable"

    # When the task runs
    result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-550")

    # Then it failed on its first attempt with a one-line error naming the reply
    assert result.state == "FAILURE"
    assert isinstance(result.result, PermanentEmailError)
    assert "550" in str(result.result) and "\n" not in str(result.result)
    assert mailbox.attempts == 1
    assert sent_rows(app_db) == []


def expected_ceilings() -> list[float]:
    """The longest wait before each retry: doubling from the first step, capped."""
    steps = range(MAX_RETRIES)
    return [min(RETRY_BACKOFF_MAX_SECONDS, RETRY_BACKOFF_SECONDS * 2**n) for n in steps]


def test_4xx_reply_retries_with_capped_backoff_and_records_nothing(mailbox, app_db):
    # Given a server that keeps deferring the message
    mailbox.reply = "451 4.3.0 Try again later"

    # When the task runs (eagerly: each retry runs at once instead of after its countdown)
    with recorded_retries() as countdowns:
        result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-451")

    # Then every attempt up to the limit was made, each retry waiting at most its ceiling
    assert mailbox.attempts == MAX_RETRIES + 1
    assert len(countdowns) == MAX_RETRIES
    waits = zip(countdowns, expected_ceilings(), strict=True)
    assert all(0 <= wait <= ceiling for wait, ceiling in waits)
    assert expected_ceilings()[-1] == RETRY_BACKOFF_MAX_SECONDS  # the cap is reached
    # And the task finally failed with the deferral, having recorded nothing as sent
    assert result.state == "FAILURE" and isinstance(result.result, TransientEmailError)
    assert "451" in str(result.result)
    assert sent_rows(app_db) == [] and mailbox.envelopes == []


def test_4xx_then_accepted_sends_once(mailbox, app_db):
    # Given a server that defers the first attempt only
    mailbox.reply = "450 4.2.1 Mailbox busy"

    async def accept_after_first(server, session, envelope):
        mailbox.attempts += 1
        if mailbox.attempts == 1:
            return mailbox.reply
        mailbox.envelopes.append(envelope)
        return "250 Message accepted"

    mailbox.handle_DATA = accept_after_first

    # When the task runs
    with recorded_retries() as countdowns:
        result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-450")

    # Then the failed attempt gave its lease back, and one retry delivered the email,
    # recorded once as sent
    assert result.successful(), result.traceback
    assert len(countdowns) == 1 and len(mailbox.messages) == 1
    assert sent_rows(app_db) == [("t-450", "ada@example.com", "sent")]


def test_connection_refused_is_retried(app_db, settings_env):
    # Given SMTP_URL names a port where nothing listens
    settings_env(SMTP_URL=f"smtp://127.0.0.1:{free_port()}")

    # When the task runs
    with recorded_retries() as countdowns:
        result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-refused")

    # Then it was retried up to the limit, failed naming the unreachable server, sent nothing
    assert len(countdowns) == MAX_RETRIES
    assert isinstance(result.result, TransientEmailError)
    assert "unreachable" in str(result.result)
    assert sent_rows(app_db) == []


@pytest.mark.parametrize("address", ["not-an-address", "ada@", "ada@@example.com", ""])
def test_invalid_address_fails_clearly_before_any_network_io(mailbox, app_db, address):
    # When the task is given a malformed recipient
    result = send_sign_in_email.apply(kwargs={**KWARGS, "email": address}, task_id="t-bad")

    # Then it fails at once with a one-line error naming the address, and nothing was sent
    assert result.state == "FAILURE"
    assert isinstance(result.result, InvalidAddressError)
    message = str(result.result)
    assert repr(address) in message and "\n" not in message
    assert mailbox.attempts == 0 and sent_rows(app_db) == []


def test_empty_code_fails_clearly_and_sends_nothing(mailbox, app_db):
    # When the task is given a blank code
    result = send_sign_in_email.apply(kwargs={**KWARGS, "code": "  "}, task_id="t-blank")

    # Then it fails at once saying so, and nothing was sent
    assert result.state == "FAILURE" and "sign-in code is empty" in str(result.result)
    assert mailbox.attempts == 0 and sent_rows(app_db) == []


def test_without_smtp_url_the_email_goes_to_the_outbox(app_db, settings_env, tmp_path, caplog):
    # Given no SMTP_URL and an outbox folder
    outbox = tmp_path / "outbox"
    settings_env(OUTBOX_DIR=str(outbox))

    # When the task runs
    with caplog.at_level("INFO", logger="tasks.sign_in"):
        result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-outbox")

    # Then one .eml file holds the email, one log line names it, and it is recorded as sent
    assert result.successful(), result.traceback
    [eml] = list(outbox.iterdir())
    assert eml.suffix == ".eml" and "t-outbox" in eml.name
    assert b"493 817" in eml.read_bytes()
    assert [r for r in caplog.records if str(eml) in r.getMessage()]
    assert sent_rows(app_db) == [("t-outbox", "ada@example.com", "sent")]


def test_implicit_tls_smtps_delivers(app_db, settings_env, tls_controller_factory,
                                     tls_server_context, trust_test_authority):
    # Given an SMTP server speaking TLS from the first byte (smtps://)
    handler = Mailbox()
    controller = tls_controller_factory(handler, ssl_context=tls_server_context)
    settings_env(SMTP_URL=f"smtps://127.0.0.1:{controller.port}")

    # When the task runs, Then the email arrives
    assert send_sign_in_email.apply(kwargs=KWARGS, task_id="t-smtps").successful()
    assert len(handler.messages) == 1


def test_starttls_with_login_delivers(app_db, settings_env, tls_controller_factory,
                                      tls_server_context, trust_test_authority):
    # Given a server that requires STARTTLS and a login
    handler = Mailbox()
    controller = tls_controller_factory(handler, tls_context=tls_server_context,
                                        require_starttls=True, auth_required=True)
    url = f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{controller.port}?starttls=true"
    settings_env(SMTP_URL=url)

    # When the task runs, Then it upgrades the connection, logs in and delivers
    result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-starttls")
    assert result.successful(), result.traceback
    assert len(handler.messages) == 1


def test_wrong_password_fails_without_revealing_it(app_db, settings_env, tls_controller_factory,
                                                   tls_server_context, trust_test_authority,
                                                   caplog):
    # Given a login the server refuses
    handler = Mailbox()
    controller = tls_controller_factory(handler, tls_context=tls_server_context,
                                        require_starttls=True, auth_required=True)
    wrong = "Wr0ng-" + SMTP_PASSWORD
    settings_env(SMTP_URL=f"smtp://{SMTP_USER}:{wrong}@127.0.0.1:{controller.port}?starttls=true")

    # When the task runs
    with caplog.at_level("DEBUG"):
        result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-auth")

    # Then it fails at once, and the password is in neither the error nor the logs
    assert result.state == "FAILURE" and isinstance(result.result, PermanentEmailError)
    assert "535" in str(result.result)
    assert wrong not in str(result.result) and wrong not in (result.traceback or "")
    assert wrong not in caplog.text
    assert handler.messages == []


@pytest.mark.parametrize(("reply", "error"), [("550 5.1.1 No such user", PermanentEmailError),
                                               ("450 4.2.0 Greylisted", TransientEmailError)])
def test_recipient_refusal_is_sorted_by_reply_class(mailbox, reply, error):
    # Given a server that refuses the recipient itself (RCPT TO)
    async def refuse_recipient(server, session, envelope, address, options):
        return reply

    mailbox.handle_RCPT = refuse_recipient
    message = sign_in_message("ada@example.com", "Ada", "1", "pgjobs <no-reply@example.com>")

    # When the message is handed over, Then the failure is classed by the reply code
    with pytest.raises(error, match=reply.split()[0]):
        deliver(message, get_settings().smtp)


def test_silent_server_times_out_as_transient():
    # Given a server that accepts connections but never greets
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = SmtpTarget(host="127.0.0.1", port=silent.getsockname()[1])
        message = sign_in_message("ada@example.com", "Ada", "1", "pgjobs <no-reply@example.com>")

        # When the message is handed over with a short timeout, Then it may be retried
        with pytest.raises(TransientEmailError, match="timed out"):
            deliver(message, target, timeout=0.5)


def test_an_exchange_past_its_deadline_sends_nothing_more():
    # Given a deadline that has passed, and a server listening
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        target = SmtpTarget(host="127.0.0.1", port=server.getsockname()[1])
        message = sign_in_message("ada@example.com", "Ada", "1", "pgjobs <no-reply@example.com>")

        # When the message is handed over, Then it may be retried, and no connection was made
        with pytest.raises(TransientEmailError, match="deadline"):
            deliver(message, target, deadline=time.monotonic() - 1)
        with pytest.raises(BlockingIOError):
            server.accept()


def test_the_deadline_cuts_short_a_step_with_a_longer_timeout():
    # Given a server that never greets, and a step timeout far longer than the deadline
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = SmtpTarget(host="127.0.0.1", port=silent.getsockname()[1])
        message = sign_in_message("ada@example.com", "Ada", "1", "pgjobs <no-reply@example.com>")
        errors: list[Exception] = []

        def hand_over() -> None:
            try:
                deliver(message, target, timeout=600, deadline=time.monotonic() + 0.5)
            except Exception as error:  # noqa: BLE001 - the test looks at what it was
                errors.append(error)

        # When the message is handed over
        worker = threading.Thread(target=hand_over, daemon=True)
        worker.start()
        worker.join(30)

        # Then it gave up by the deadline, not after the step timeout, as a transient failure
        assert not worker.is_alive()
        [error] = errors
        assert isinstance(error, TransientEmailError) and "timed out" in str(error)


def test_a_refused_goodbye_after_the_message_was_accepted_is_a_success(mailbox, app_db):
    # Given a server that accepts the message, then answers QUIT with an error
    async def refuse_quit(server, session, envelope):
        return "421 4.3.0 Closing"

    mailbox.handle_QUIT = refuse_quit

    # When the task runs
    with recorded_retries() as countdowns:
        result = send_sign_in_email.apply(kwargs=KWARGS, task_id="t-quit")

    # Then it succeeded without a retry (which would send a second email)
    assert result.successful(), result.traceback
    assert countdowns == [] and len(mailbox.envelopes) == 1
    assert sent_rows(app_db) == [("t-quit", "ada@example.com", "sent")]
