"""Unit tests of the row <-> message mapping: priorities, ETA and malformed payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

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
    ("{", "not JSON"), ("[]", "no 'properties'"), ('{"properties": 1}', "no 'properties'"),
    ('{"properties": {}, "body": 5}', "not a string"),
    ('{"properties": {"body_encoding": "base64"}, "body": "%%%"}', "not valid base64")])
def test_malformed_payloads_are_named(payload: str, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(Claimed(id=1, queue="q", deliveries=1, payload=payload))
