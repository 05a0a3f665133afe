"""Fixtures for the task tests: a real SMTP server in-process, settings switched by env."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator

import pytest
import trustme
from aiosmtpd.controller import Controller
from task_helpers import Mailbox, authenticate, free_port


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set environment variables and make the next get_settings() read them."""
    from config.settings import get_settings

    def apply(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()


def _start(handler: Mailbox, **kwargs: object) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(),
                            authenticator=authenticate, **kwargs)
    controller.start()
    return controller


@pytest.fixture
def mailbox(app_db: str, settings_env: Callable[..., None]) -> Iterator[Mailbox]:
    """A plain SMTP server on 127.0.0.1; SMTP_URL points at it."""
    handler = Mailbox()
    controller = _start(handler)
    try:
        settings_env(SMTP_URL=f"smtp://127.0.0.1:{controller.port}")
        yield handler
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def tls_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server_context(tls_authority) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def trust_test_authority(tls_authority, tmp_path, settings_env) -> None:
    """Make the default SSL context (what the tasks use) trust the test authority."""
    bundle = tmp_path / "ca.pem"
    tls_authority.cert_pem.write_to_path(str(bundle))
    settings_env(SSL_CERT_FILE=str(bundle))


@pytest.fixture
def tls_controller_factory(tls_server_context) -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []

    def start(handler: Mailbox, **kwargs: object) -> Controller:
        controller = _start(handler, **kwargs)
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop()
