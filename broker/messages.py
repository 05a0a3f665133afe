"""Message rows: what is stored for a kombu message, and what a stored row turns back into.

Decoding is the edge where a row meets kombu and Celery, and both trust what they are given:
a ``headers`` string, a missing body, a body in an unknown encoding or nested a thousand
levels deep raises inside the worker's main process and stops it, and a body that does not
decode is acked and lost. So :func:`decode` refuses, with :class:`MalformedMessage` naming
the fault, every row that kombu's virtual transport and Celery's consumer could not take as
they are; the channel moves such a row to the dead-letter table. What it checks:

- the envelope: a JSON object of at most ``MAX_PAYLOAD_CHARS`` characters and ``MAX_DEPTH``
  levels, with a ``properties`` object, a ``body`` string and, where given, a ``headers`` and
  a ``delivery_info`` object, and strings (or null) where kombu and Celery expect text;
- the body, decoded as kombu will: ``body_encoding`` (none or base64), ``compression``,
  then the content type: JSON must parse (within ``MAX_DEPTH``), a raw body
  (``application/data`` or ``application/text``) must decode in its ``content-encoding``;
  any other content type is refused, as a consumer may refuse it too (Celery then acks the
  message: lost) or it cannot be checked without running its decoder (pickle);
- Celery task messages (a ``task`` header, or a protocol 1 body naming its task): the body
  shape and the header fields the worker reads before a pool process ever sees the task.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kombu import compression, serialization
from kombu.exceptions import DecodeError

MIN_PRIORITY, MAX_PRIORITY = 0, 255
# RabbitMQ's default limit on a message; a row above it is refused before it is parsed.
MAX_PAYLOAD_CHARS = 128 * 1024 * 1024
# serde_json's default: deep enough for any real payload, and far enough below Python's
# recursion limit that kombu, Celery and pickle (to the pool) never hit it on the way.
MAX_DEPTH = 128
JSON = "application/json"
BODY_ENCODINGS = frozenset({"base64"})  # the codecs of kombu's virtual channel
# Celery task fields read in the worker's main process, and what each must be.
TASK_TEXT = ("id", "task")
TASK_OPTIONAL_TEXT = ("shadow", "root_id", "parent_id", "group", "eta", "expires",
                      "argsrepr", "kwargsrepr", "origin", "lang")
TASK_OPTIONAL_INT = ("retries", "group_index", "replaced_task_nesting")


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
    was delivered before. Raises :class:`MalformedMessage` for a row kombu or Celery could not
    take (see the module docstring)."""
    payload = _envelope(row.payload)
    properties = _mapping(payload, "properties", required=True)
    headers = _mapping(payload, "headers")
    info = _mapping(properties, "delivery_info")
    _check_texts(payload, "payload", ("content-type", "content-encoding"))
    _check_texts(properties, "properties", ("body_encoding", "correlation_id", "reply_to"))
    _check_texts(info, "delivery_info", ("exchange", "routing_key"))
    content = _content(payload, properties, headers)
    _check_task(headers, content)
    properties["delivery_tag"] = row.id
    info["redelivered"] = row.deliveries > 1
    properties["delivery_info"] = info
    payload["redelivered"] = row.deliveries > 1
    return payload


# -- the envelope -----------------------------------------------------------------------------

def _envelope(text: str) -> dict[str, Any]:
    if len(text) > MAX_PAYLOAD_CHARS:
        raise MalformedMessage(f"payload has {len(text)} characters, more than "
                               f"{MAX_PAYLOAD_CHARS}")
    try:
        payload = json.loads(text)
    except RecursionError:
        raise MalformedMessage(f"payload nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise MalformedMessage(f"payload is not JSON ({_brief(exc)})") from None
    if not isinstance(payload, dict):
        raise MalformedMessage("payload is not a JSON object")
    _check_depth(payload, text.count("[") + text.count("{"), "payload")
    return payload


def _mapping(owner: dict[str, Any], key: str, required: bool = False) -> dict[str, Any]:
    """``owner[key]`` as a dict: kombu and Celery call ``.get`` on it (absent or null: {})."""
    value = owner.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise MalformedMessage(f"payload has no {key!r} object")
    return value


def _check_texts(owner: dict[str, Any], where: str, keys: tuple[str, ...],
                 required: bool = False) -> None:
    """Each of ``keys`` in ``owner`` is a string PostgreSQL and a log line can take (no NUL,
    no lone surrogate), or None unless ``required``."""
    for key in keys:
        value = owner.get(key)
        # The common cases first and cheaply: absent, or plain ASCII.
        if value is None and not required:
            continue
        if not (isinstance(value, str) and value.isascii() and "\x00" not in value):
            _check_text(value, f"{where} {key!r}")


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise MalformedMessage(f"{what} is not a string")
    if "\x00" in value or not _is_unicode(value):
        raise MalformedMessage(f"{what} is not valid text")


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_depth(value: object, brackets: int, what: str) -> None:
    """Refuse ``value`` if it nests deeper than MAX_DEPTH; free when its text has fewer
    opening brackets than that, as nearly every message does."""
    if brackets <= MAX_DEPTH:
        return
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_DEPTH):
        if not level:
            return
        level = [child for item in level
                 for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, dict | list)]
    if level:
        raise MalformedMessage(f"{what} nests deeper than {MAX_DEPTH} levels")


# -- the body ---------------------------------------------------------------------------------

def _content(payload: dict[str, Any], properties: dict[str, Any],
             headers: dict[str, Any]) -> object:
    """The body as kombu's ``Message.decode()`` will return it."""
    body = payload.get("body")
    if body is None:
        raise MalformedMessage("payload has no 'body'")
    if not isinstance(body, str):
        raise MalformedMessage("body is not a string")
    data = _body_bytes(body, properties.get("body_encoding"), headers.get("compression"))
    return _deserialized(data, payload.get("content-type"), payload.get("content-encoding"))


def _body_bytes(body: str, encoding: str | None, compressed: object) -> bytes:
    """The bytes kombu's virtual ``Message`` makes of ``body``, in the same order: the
    transport codec, then decompression, then UTF-8 for a body still in text."""
    data: str | bytes = body
    if encoding and encoding.lower() != "utf-8":
        if encoding not in BODY_ENCODINGS:
            raise MalformedMessage(f"body_encoding {encoding!r} is unknown; use base64")
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("body is not valid base64") from None
    if compressed:
        data = _decompressed(data, compressed)
    if isinstance(data, str):
        if not _is_unicode(data):
            raise MalformedMessage("body is not valid Unicode")
        data = data.encode("utf-8")
    return data


def _decompressed(data: str | bytes, method: object) -> bytes:
    if not isinstance(method, str):
        raise MalformedMessage("header 'compression' is not a string")
    try:
        compression.get_decoder(method)
    except KeyError:
        raise MalformedMessage(f"compression {method!r} is unknown") from None
    try:
        return compression.decompress(data, method)
    except Exception as exc:  # kombu catches any error here too, then acks the message
        raise MalformedMessage(f"body does not decompress as {method} ({_brief(exc)})") from None


def _deserialized(data: bytes, content_type: str | None, encoding: str | None) -> object:
    content_type = content_type or "application/data"
    # Every consumer takes JSON and kombu's raw types. Others may be refused by a consumer's
    # `accept` list (Celery then acks the message: lost), or cannot be checked without
    # running their decoder (pickle).
    if content_type != JSON and content_type not in serialization.TRUSTED_CONTENT:
        raise MalformedMessage(f"content type {content_type!r} is not accepted; pgjobs "
                               f"carries {JSON} or raw (application/data) bodies")
    if content_type == JSON and not data:
        raise MalformedMessage(f"body is empty, not {JSON}")
    try:
        value = serialization.loads(data, content_type, encoding, force=True)
    except DecodeError as exc:
        raise MalformedMessage(f"body does not decode as {content_type} in "
                               f"{encoding or 'utf-8'} ({_brief(exc)})") from None
    if content_type == JSON:
        _check_depth(value, data.count(b"[") + data.count(b"{"), "body")
    return value


# -- Celery task messages ---------------------------------------------------------------------

def _check_task(headers: dict[str, Any], content: object) -> None:
    """What Celery's worker reads of a task message before a pool process runs it."""
    if "task" in headers:  # protocol 2
        args, kwargs, fields = _protocol2_arguments(content, headers)
    elif isinstance(content, dict) and "task" in content:  # protocol 1
        args, kwargs, fields = content.get("args", ()), content.get("kwargs", {}), content
    else:
        return
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise MalformedMessage("Celery task arguments are not a list and a mapping")
    _check_task_fields(fields)


def _protocol2_arguments(content: object, headers: dict[str, Any]) -> tuple[
        object, object, dict[str, Any]]:
    if isinstance(content, dict) and "args" in content:  # protocol 1 body, protocol 2 headers
        return content["args"], content.get("kwargs", {}), {**content, **headers}
    if not isinstance(content, list) or len(content) != 3:
        raise MalformedMessage("Celery task body is not [args, kwargs, embed]")
    args, kwargs, embed = content
    if embed is not None and not isinstance(embed, dict):
        raise MalformedMessage("Celery task body's embed is not a mapping")
    return args, kwargs, headers


def _check_task_fields(fields: dict[str, Any]) -> None:
    _check_texts(fields, "Celery task field", TASK_TEXT, required=True)
    _check_texts(fields, "Celery task field", TASK_OPTIONAL_TEXT)
    for key in TASK_OPTIONAL_INT:
        value = fields.get(key)
        if value is not None and not isinstance(value, int):
            raise MalformedMessage(f"Celery task field {key!r} is not an integer")
    _check_time_limits(fields.get("timelimit"))
    stamped = fields.get("stamped_headers")
    if stamped is not None and not (isinstance(stamped, list)
                                    and all(isinstance(name, str) for name in stamped)):
        raise MalformedMessage("Celery task field 'stamped_headers' is not a list of names")
    if not isinstance(fields.get("stamps") or {}, dict):
        raise MalformedMessage("Celery task field 'stamps' is not a mapping")


def _check_time_limits(value: object) -> None:
    """None, or the (hard, soft) pair of seconds the worker unpacks and hands to its pool."""
    if value is None:
        return
    if not (isinstance(value, list | tuple) and len(value) == 2
            and all(limit is None or _is_seconds(limit) for limit in value)):
        raise MalformedMessage("Celery task field 'timelimit' is not a pair of seconds")


def _is_seconds(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _brief(exc: BaseException, limit: int = 200) -> str:
    """An error's text, clipped: some quote the whole offending value."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
