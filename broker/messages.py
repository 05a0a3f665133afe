"""Message rows: what is stored for a kombu message, and what a stored row turns back into."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MIN_PRIORITY, MAX_PRIORITY = 0, 255


class MalformedMessage(ValueError):
    """A stored row cannot become a kombu message; the text says why."""


@dataclass(frozen=True)
class Claimed:
    """One claimed row."""

    id: int
    queue: str
    deliveries: int
    payload: str


def wake_channel(queue: str) -> str:
    """The NOTIFY channel of ``queue``: 39 bytes whatever the name (same formula as the SQL)."""
    return "pgjobs_" + hashlib.md5(queue.encode("utf-8"), usedforsecurity=False).hexdigest()


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def priority_of(message: dict[str, Any]) -> int:
    """The AMQP priority of ``message`` clamped to 0..255 (higher runs first)."""
    try:
        priority = int(message["properties"].get("priority") or 0)
    except (TypeError, ValueError, KeyError, AttributeError):
        return MIN_PRIORITY
    return max(MIN_PRIORITY, min(priority, MAX_PRIORITY))


def parse_eta(value: object) -> datetime | None:
    """Celery's ``headers["eta"]`` (ISO-8601) as an aware datetime; naive means UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        eta = datetime.fromisoformat(value)
    except ValueError:
        return None
    return eta if eta.tzinfo else eta.replace(tzinfo=UTC)


def visible_at(message: dict[str, Any], lookahead: float, now: datetime | None = None) -> (
        datetime | None):
    """When a message with a future ETA may be handed out (``eta - lookahead``); None = now."""
    headers = message.get("headers") or {}
    eta = parse_eta(headers.get("eta") if isinstance(headers, dict) else None)
    if eta is None:
        return None
    due = eta - timedelta(seconds=lookahead)
    return due if due > (now or datetime.now(UTC)) else None


def decode(row: Claimed) -> dict[str, Any]:
    """The kombu payload of ``row``, marked with its delivery tag (the row id) and whether it
    was delivered before. Raises :class:`MalformedMessage`."""
    try:
        payload = json.loads(row.payload)
    except ValueError as exc:
        raise MalformedMessage(f"payload is not JSON ({exc})") from None
    properties = payload.get("properties") if isinstance(payload, dict) else None
    if not isinstance(properties, dict):
        raise MalformedMessage("payload has no 'properties' object")
    _check_body(payload.get("body"), properties.get("body_encoding"))
    properties["delivery_tag"] = row.id
    info = properties.get("delivery_info")
    info = info if isinstance(info, dict) else {}
    info["redelivered"] = row.deliveries > 1
    properties["delivery_info"] = info
    payload["redelivered"] = row.deliveries > 1
    return payload


def _check_body(body: object, encoding: object) -> None:
    if body is None:
        return
    if not isinstance(body, str):
        raise MalformedMessage("body is not a string")
    if encoding == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("body is not valid base64") from None
