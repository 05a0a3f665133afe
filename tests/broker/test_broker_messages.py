"""Unit tests of the row <-> message mapping: priorities, ETA and malformed payloads."""

from __future__ import annotations

import base64
import json
import re
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Connection

from broker import messages
from broker.messages import (
    Claimed,
    MalformedMessage,
    decode,
    parse_eta,
    priority_of,
    visible_at,
    wake_channel,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def message(priority: object = None, eta: object = None) -> dict:
    headers = {} if eta is None else {"eta": eta}
    return {"body": "", "headers": headers, "properties": {"priority": priority}}


@pytest.mark.parametrize(("given", "expected"), [
    (None, 0), (0, 0), (7, 7), (255, 255), (300, 255), (-4, 0), ("9", 9), ("high", 0)])
def test_priority_is_clamped_to_the_amqp_range(given: object, expected: int) -> None:
    assert priority_of(message(priority=given)) == expected


def test_a_future_eta_is_held_back_by_the_look_ahead() -> None:
    eta = NOW + timedelta(hours=1)
    assert visible_at(message(eta=eta.isoformat()), 2.0, now=NOW) == eta - timedelta(seconds=2)


@pytest.mark.parametrize("eta", [None, "", "not a date", 12, (NOW - timedelta(1)).isoformat(),
                                 (NOW + timedelta(seconds=1)).isoformat()])
def test_a_missing_past_unreadable_or_imminent_eta_means_visible_now(eta: object) -> None:
    assert visible_at(message(eta=eta), 2.0, now=NOW) is None


def test_a_naive_eta_is_read_as_utc() -> None:
    assert parse_eta("2030-01-01T12:00:00") == NOW


def test_wake_channels_fit_postgres_identifiers_whatever_the_queue_name() -> None:
    names = ["celery", "x" * 500, "é'; DROP TABLE x; --"]
    channels = [wake_channel(name) for name in names]
    assert all(len(channel.encode()) <= 63 for channel in channels)
    assert len(set(channels)) == len(names)


def test_decoding_marks_the_delivery_tag_and_redelivery() -> None:
    payload = json.dumps({"body": "e30=", "properties": {"body_encoding": "base64"}})
    decoded = decode(Claimed(id=41, queue="q", deliveries=2, payload=payload))
    assert decoded["properties"]["delivery_tag"] == 41
    assert decoded["properties"]["delivery_info"]["redelivered"] is True


@pytest.mark.parametrize(("payload", "reason"), [
    ("{", "not JSON"), ("[]", "not a JSON object"), ('{"properties": 1}', "no 'properties'"),
    ('{"properties": {}, "body": 5}', "not a string"),
    ('{"properties": {"body_encoding": "base64"}, "body": "%%%"}', "not valid base64")])
def test_malformed_payloads_are_named(payload: str, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(Claimed(id=1, queue="q", deliveries=1, payload=payload))


# -- poison rows: every shape kombu or Celery would choke on is refused with a reason -----------

TASK_ID = "0b7e3f4e-6f43-4a57-9a53-3cbf3d1b5f1a"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def task_envelope(task: str = "tasks.add", args: list | None = None, queue: str = "celery",
                  task_id: str = TASK_ID) -> dict[str, Any]:
    """A Celery protocol 2 task message as kombu's virtual transport stores it."""
    body = [args if args is not None else [1, 2], {}, EMBED]
    return {
        "body": b64(json.dumps(body)),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": repr(tuple(body[0])), "kwargsrepr": "{}", "origin": "gen1@host",
            "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": "6e4bb0b4-c1d5-3c3c-a8ad-1a4cbd8de3c5",
            "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0, "body_encoding": "base64", "delivery_tag": "f3b1c2d4",
        },
    }


REMOVE = object()
DEEP = 100_000


def mangle(envelope: dict[str, Any], path: str, value: object) -> None:
    """Set the field at ``path`` (dotted) of ``envelope``, or remove it when ``value`` is
    ``REMOVE``; nothing when an earlier change replaced one of its parents."""
    *parents, last = path.split(".")
    owner: Any = envelope
    for key in parents:
        owner = owner.get(key) if isinstance(owner, dict) else None
    if not isinstance(owner, dict):
        return
    if value is REMOVE:
        owner.pop(last, None)
    else:
        owner[last] = value


def changed(envelope: dict[str, Any], path: str, value: object) -> str:
    """A copy of ``envelope`` as row text, with the field at ``path`` set or removed."""
    copy = json.loads(json.dumps(envelope))
    mangle(copy, path, value)
    return json.dumps(copy)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def decode_text(payload: str) -> dict[str, Any]:
    return decode(Claimed(id=7, queue="celery", deliveries=1, payload=payload))


def poison_rows(name: str = "tasks.add") -> dict[str, tuple[str, str]]:
    """Each named poison shape, as a message for task ``name``: (row payload, what the reason
    must say)."""
    task = task_envelope(task=name)
    return {
        "headers is a string": (changed(task, "headers", "oops"), "no 'headers' object"),
        "body is missing": (changed(task, "body", REMOVE), "no 'body'"),
        "body is not a string": (changed(task, "body", [1]), "body is not a string"),
        "payload nested beyond the recursion limit": (
            '{"properties": {}, "body": "", "x": ' + nested(DEEP) + "}", "nests deeper"),
        "payload nested below the recursion limit, beyond the bound": (
            changed(task, "headers.deep", json.loads(nested(500))), "nests deeper"),
        "body nested beyond the recursion limit": (
            changed(task, "body", b64(nested(DEEP))), "body does not decode"),
        "body nested below the recursion limit, beyond the bound": (
            changed(task, "body", b64(nested(500))), "body nests deeper"),
        "body is not JSON": (changed(task, "body", b64("not json")), "does not decode"),
        "body is empty JSON": (changed(task, "body", ""), "body is empty"),
        "body is not valid base64": (changed(task, "body", "%%%"), "not valid base64"),
        "base64 body is not UTF-8": (changed(task, "body", b64(b"\xff\xfe[]")),
                                     "does not decode"),
        "body_encoding is unknown": (changed(task, "properties.body_encoding", "rot13"),
                                     "'rot13' is unknown"),
        "body_encoding is not a string": (changed(task, "properties.body_encoding", 64),
                                          "'body_encoding' is not a string"),
        "body text is not Unicode": (
            changed(changed_obj(task, "properties.body_encoding", None), "body", "[\ud800]"),
            "not valid Unicode"),
        "content encoding is unknown": (
            changed(raw_envelope(), "content-encoding", "no-such-codec"), "does not decode"),
        "content encoding is not a string": (
            changed(task, "content-encoding", ["utf-8"]), "'content-encoding' is not a string"),
        "raw body is not in its content encoding": (
            changed(raw_envelope(), "body", b64(b"\xff\xfe")), "does not decode"),
        "content type is pickle": (
            changed(task, "content-type", "application/x-python-serialize"), "not accepted"),
        "content type is not a string": (changed(task, "content-type", 1), "not a string"),
        "content type is one a consumer may refuse": (
            changed(raw_envelope(), "content-type", "text/plain"), "not accepted"),
        "compression is unknown": (changed(task, "headers.compression", "lz99"), "unknown"),
        "compressed body does not decompress": (
            changed(task, "headers.compression", "zlib"), "does not decompress"),
        "delivery_info is a list": (changed(task, "properties.delivery_info", []),
                                    "no 'delivery_info' object"),
        "routing key is not a string": (
            changed(task, "properties.delivery_info.routing_key", {}), "not a string"),
        "task id is missing": (changed(task, "headers.id", REMOVE), "'id' is not a string"),
        "task id holds a NUL": (changed(task, "headers.id", "a\x00b"), "not valid text"),
        "task name is a list": (changed(task, "headers.task", ["x"]), "'task' is not a string"),
        "task body is a number": (changed(task, "body", b64("5")), "not [args, kwargs, embed]"),
        "task body is raw bytes": (
            changed(changed_obj(task, "content-type", "application/data"), "body", b64("x")),
            "not [args, kwargs, embed]"),
        "task args are a mapping": (changed(task, "body", b64('[{}, {}, {}]')),
                                    "not a list and a mapping"),
        "task kwargs are a list": (changed(task, "body", b64('[[], [], {}]')),
                                   "not a list and a mapping"),
        "task embed is a list": (changed(task, "body", b64('[[], {}, []]')),
                                 "embed is not a mapping"),
        "task timelimit is text": (changed(task, "headers.timelimit", "soon"), "'timelimit'"),
        "task timelimit is negative": (changed(task, "headers.timelimit", [-1, None]),
                                       "'timelimit'"),
        "task eta is a number": (changed(task, "headers.eta", 5), "'eta' is not a string"),
        "task retries is text": (changed(task, "headers.retries", "2"), "'retries'"),
        "task stamped_headers is a number": (changed(task, "headers.stamped_headers", 3),
                                             "'stamped_headers'"),
        "protocol 1 task without id": (proto1_envelope(name, id=None),
                                       "'id' is not a string"),
        "protocol 1 task kwargs are a list": (proto1_envelope(name, kwargs=[]),
                                              "not a list and a mapping"),
    }


def changed_obj(envelope: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    return json.loads(changed(envelope, path, value))


def raw_envelope(data: bytes = b"hello") -> dict[str, Any]:
    """A raw kombu message (no serializer), as the virtual transport stores it."""
    return {"body": b64(data), "content-type": "application/data", "content-encoding": "utf-8",
            "headers": {}, "properties": {"body_encoding": "base64", "delivery_info": {}}}


def proto1_envelope(name: str, **fields: object) -> str:
    body = {"task": name, "id": TASK_ID, "args": [1, 2], "kwargs": {}, **fields}
    return changed(changed_obj(task_envelope(), "headers", {}), "body", b64(json.dumps(body)))


@pytest.mark.parametrize("name", list(poison_rows()))
def test_a_poison_row_is_refused_with_a_reason_that_names_the_fault(name: str) -> None:
    payload, reason = poison_rows()[name]
    with pytest.raises(MalformedMessage, match=re.escape(reason)):
        decode_text(payload)


def test_a_payload_over_the_size_bound_is_refused_before_it_is_parsed(monkeypatch) -> None:
    monkeypatch.setattr(messages, "MAX_PAYLOAD_CHARS", 100)
    with pytest.raises(MalformedMessage, match="more than 100"):
        decode_text("{" + " " * 200)


# -- what decodes still decodes -----------------------------------------------------------------

def test_a_celery_task_message_decodes_and_kombu_reads_its_body() -> None:
    message = kombu_message(decode_text(json.dumps(task_envelope())))
    assert message.decode() == [[1, 2], {}, EMBED]
    assert message.headers["task"] == "tasks.add"


def test_a_compressed_task_body_decodes() -> None:
    body = zlib.compress(json.dumps([[1], {}, EMBED]).encode())
    envelope = changed_obj(task_envelope(), "headers.compression", "application/x-gzip")
    message = kombu_message(decode_text(changed(envelope, "body", b64(body))))
    assert message.decode() == [[1], {}, EMBED]


def test_a_remote_control_message_with_numeric_headers_decodes() -> None:
    body = {"method": "ping", "arguments": {}, "destination": None, "pattern": None,
            "matcher": None, "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "k"},
            "ticket": "t"}
    envelope = changed_obj(task_envelope(), "headers", {"clock": 3, "expires": 1.7e9})
    message = kombu_message(decode_text(changed(envelope, "body", b64(json.dumps(body)))))
    assert message.decode()["method"] == "ping"


def test_a_raw_binary_message_decodes_to_its_bytes() -> None:
    envelope = changed_obj(raw_envelope(b"\xff\x00"), "content-encoding", "binary")
    assert kombu_message(decode_text(json.dumps(envelope))).decode() == b"\xff\x00"


def test_nesting_up_to_the_bound_decodes() -> None:
    deep = json.loads(nested(messages.MAX_DEPTH - 3))
    envelope = changed_obj(task_envelope(args=[deep]), "headers.deep", deep)
    assert kombu_message(decode_text(json.dumps(envelope))).decode()[0] == [deep]


_CHANNEL = Connection("memory://").default_channel


def kombu_message(payload: dict[str, Any]) -> Any:
    """The message kombu's virtual transport makes of a decoded row, failing on any error
    kombu would otherwise hand to its consumer's decode-error handler."""
    message = _CHANNEL.Message(payload, channel=_CHANNEL)
    assert not message.errors, message.errors
    return message


# -- property: decode returns what kombu can read, or refuses; never anything else ------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=12)
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
               max_size=40)


TASK_BODY = [[1, 2], {}, EMBED]


def _bodies(task_body: str) -> st.SearchStrategy:
    return st.one_of(
        st.just(b64(task_body)), st.just(b64(task_body)), st.just(b64(task_body)),
        st.binary(max_size=30).map(b64),
        JSON_VALUES, JSON_VALUES.map(lambda value: b64(json.dumps(value))),
        st.text(max_size=20), st.just(b64(zlib.compress(task_body.encode()))),
        st.just(task_body))


_ENVELOPE = task_envelope()
MANGLED_PATHS = [
    "headers", "properties", "body", "content-type", "content-encoding",
    "headers.compression", "properties.delivery_info.exchange",
    "properties.delivery_info.routing_key",
    *(f"headers.{key}" for key in _ENVELOPE["headers"]),
    *(f"properties.{key}" for key in _ENVELOPE["properties"])]
SPECIAL_VALUES = {
    "content-type": st.sampled_from(["application/data", "text/plain",
                                     "application/x-python-serialize", "application/x-yaml"]),
    "content-encoding": st.sampled_from(["binary", "latin-1", "utf-16", "rot13", "zlib", "nope"]),
    "headers.compression": st.sampled_from(["zlib", "bzip2", "nope"]),
    "properties.body_encoding": st.sampled_from([None, "utf-8", "BASE64", "rot13"]),
}


@st.composite
def envelopes(draw: st.DrawFn, task: str, body: list) -> str:
    """A message for ``task`` whose body is ``body`` or any other, with up to three of its
    fields replaced or removed."""
    envelope = task_envelope(task=task, task_id=draw(st.uuids()).hex)
    envelope["body"] = draw(_bodies(json.dumps(body)))
    for path in draw(st.lists(st.sampled_from(MANGLED_PATHS), max_size=3, unique=True)):
        values = JSON_VALUES | st.just(REMOVE)
        if path in SPECIAL_VALUES:
            values = SPECIAL_VALUES[path] | values
        mangle(envelope, path, draw(values))
    return json.dumps(envelope)


def poison_payloads(task: str = "tasks.add", body: list = TASK_BODY) -> st.SearchStrategy[str]:
    """Row payloads: mangled task messages mostly, any JSON value, any text."""
    mangled = envelopes(task, body)
    return st.one_of(mangled, mangled, mangled, mangled, JSON_VALUES.map(json.dumps), TEXT)


@settings(max_examples=300, deadline=None, database=None)
@given(poison_payloads())
def test_decode_returns_a_message_kombu_can_decode_or_raises_malformed(payload: str) -> None:
    try:
        decoded = decode_text(payload)
    except MalformedMessage:
        return
    message = kombu_message(decoded)
    if message.content_type == "application/json":
        message.decode()
