"""The transport is found by its URL scheme, as Celery's ``inspect report`` looks it up."""

from __future__ import annotations

import pytest
from kombu import Connection

import broker  # noqa: F401 - importing the broker registers its schemes
from broker.transport import Transport


@pytest.mark.parametrize("url", ["postgresql://u@db.example/jobs", "postgres://u@db/jobs"])
def test_a_postgresql_url_alone_selects_the_transport(url):
    assert Connection(url).get_transport_cls() is Transport
