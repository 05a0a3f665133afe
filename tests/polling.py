"""Bounded polling for tests: wait for a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
    explain: Callable[[], str] = str,
) -> T:
    """Poll ``check`` until it returns something truthy and return that; fail naming ``what``
    (and whatever ``explain`` adds) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{explain()}")
        time.sleep(0.05)
