"""Fixtures for the broker conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kombu import Connection


@pytest.fixture
def names() -> Callable[[str], str]:
    """Unique queue/exchange names, so tests on the shared memory transport never meet."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}.{suffix}"


@pytest.fixture
def connections() -> Iterator[list[Connection]]:
    opened: list[Connection] = []
    yield opened
    for conn in opened:
        conn.release()
