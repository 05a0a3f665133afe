"""Bulk enqueue: ``broker.enqueue_many`` stores what ``apply_async`` stores, all or nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from broker_helpers import FAST_OPTIONS, PG_TRANSPORT, sql
from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from broker import enqueue_many, in_transaction
from broker.messages import wake_channel

STORED = ("SELECT queue, priority, delayed, visible_at, payload FROM pgjobs_broker_message "
          "ORDER BY id")
# Differ between any two messages: ids, delivery tags, the publishing thread's reply queue.
UNIQUE_HEADERS = ("id", "root_id")
UNIQUE_PROPERTIES = ("correlation_id", "delivery_tag")


@pytest.fixture
def app(db_url: str) -> Iterator[Celery]:
    app = Celery("bulk", broker=db_url, set_as_current=False)
    app.conf.update(broker_transport=PG_TRANSPORT, broker_transport_options=FAST_OPTIONS,
                    task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    task_default_queue="work", enable_utc=True, timezone="UTC",
                    task_routes={"bulk.report": {"queue": "reports"}})
    app.task(name="bulk.add")(_add)
    app.task(name="bulk.report", priority=7)(_add)
    app.task(name="bulk.ping")(_ping)
    yield app
    app.pool.force_close_all()  # Celery's close() drops pooled connections without closing
    app.close()


def _add(x: int, y: int = 0) -> int:
    return x + y


def _ping() -> str:
    return "pong"


def stored(db_url: str) -> list[dict[str, Any]]:
    return [{"queue": queue, "priority": priority, "delayed": delayed, "visible_at": visible,
             "payload": json.loads(payload)}
            for queue, priority, delayed, visible, payload in sql(db_url, STORED)]


def without_ids(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with what differs between any two messages left out."""
    headers = {k: v for k, v in payload["headers"].items() if k not in UNIQUE_HEADERS}
    properties = {k: v for k, v in payload["properties"].items() if k not in UNIQUE_PROPERTIES}
    return {**payload, "headers": headers, "properties": properties}


def count(db_url: str) -> int:
    return sql(db_url, "SELECT count(*) FROM pgjobs_broker_message")[0][0]


@pytest.mark.parametrize("signature, options", [
    (lambda app: app.tasks["bulk.add"].s(1, y=2), {}),
    (lambda app: app.tasks["bulk.report"].s(3), {}),
    (lambda app: app.tasks["bulk.add"].signature((4,), {"y": [5, "six"]}, priority=3,
                                                 queue="other", expires=600), {}),
    (lambda app: app.tasks["bulk.add"].s(7), {"countdown": 300, "retries": 2,
                                              "headers": {"tenant": "acme"}}),
    (lambda app: app.tasks["bulk.ping"].s(), {}),
    (lambda app: app.tasks["bulk.add"].s(x=8), {}),
    (lambda app: app.tasks["bulk.ping"].s(), {"argsrepr": "(hidden)", "kwargsrepr": "{...}"}),
], ids=["args-and-kwargs", "routed", "options", "apply-options", "no-arguments",
        "kwargs-only", "reprs-given"])
def test_the_stored_payload_is_the_one_apply_async_stores(db_url, app, signature, options):
    # given the same signature sent once by apply_async and once by enqueue_many
    sig = signature(app)
    sent = sig.clone().apply_async(**options)
    (bulk,) = enqueue_many([sig.clone()], **options)

    # then both rows have the same queue, priority and delay, and the same payload shape
    # apart from the ids, with the ids of each result
    single, many = stored(db_url)
    assert {k: single[k] for k in ("queue", "priority", "delayed")} == {
        k: many[k] for k in ("queue", "priority", "delayed")}
    assert single["payload"]["headers"]["id"] == sent.id
    assert many["payload"]["headers"]["id"] == many["payload"]["headers"]["root_id"] == bulk.id
    assert many["payload"]["properties"]["correlation_id"] == bulk.id
    expected, got = without_ids(single["payload"]), without_ids(many["payload"])
    for timed in ("eta", "expires"):  # computed from "now", a moment apart
        if expected["headers"][timed] is not None:
            assert abs(_parsed(got["headers"][timed]) - _parsed(expected["headers"][timed])) < (
                timedelta(seconds=5))
            expected["headers"][timed] = got["headers"][timed]
    if "expiration" in expected["properties"]:
        assert abs(int(got["properties"]["expiration"]) -
                   int(expected["properties"]["expiration"])) < 5000
        expected["properties"]["expiration"] = got["properties"]["expiration"]
    assert got == expected


def _parsed(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_routes_priorities_and_etas_follow_each_signature(db_url, app):
    # given signatures for the default queue, a routed task, an explicit queue, and an ETA
    eta = datetime.now(UTC) + timedelta(hours=1)
    sigs = [app.tasks["bulk.add"].s(1), app.tasks["bulk.report"].s(2),
            app.tasks["bulk.add"].s(3).set(queue="other", priority=9),
            app.tasks["bulk.add"].s(4).set(eta=eta)]

    # when they are enqueued together
    results = enqueue_many(sigs)

    # then each row is where apply_async would put it, in order, with the results' ids
    rows = stored(db_url)
    assert [row["payload"]["headers"]["id"] for row in rows] == [r.id for r in results]
    assert [(row["queue"], row["priority"], row["delayed"]) for row in rows] == [
        ("work", 0, False), ("reports", 7, False), ("other", 9, False), ("work", 0, True)]
    assert rows[3]["visible_at"] == eta - timedelta(seconds=2)  # the transport's look-ahead
    assert [row["payload"]["properties"]["delivery_info"]["routing_key"] for row in rows] == [
        "work", "reports", "other", "work"]


def test_an_exchange_routes_through_its_bindings(db_url, app):
    # given a topic exchange bound to two queues
    exchange = Exchange("events", type="topic")
    with app.connection_for_write() as conn:
        for name, key in (("audit", "user.*"), ("mail", "user.created")):
            Queue(name, exchange, routing_key=key)(conn.default_channel).declare()

    # when signatures are sent to it with two routing keys
    enqueue_many([app.tasks["bulk.add"].s(1).set(exchange=exchange, routing_key="user.created"),
                  app.tasks["bulk.add"].s(2).set(exchange=exchange, routing_key="user.gone")])

    # then each message reaches the queues its key matches, as a single publish would
    assert sorted((row["queue"], row["payload"]["headers"]["argsrepr"])
                  for row in stored(db_url)) == [
        ("audit", "(1,)"), ("audit", "(2,)"), ("mail", "(1,)")]


def test_inside_a_rolled_back_transaction_nothing_is_enqueued_or_woken(db_url, app):
    with psycopg.connect(db_url, autocommit=True) as listening:
        listening.execute(f'LISTEN "{wake_channel("work")}"')
        # given a caller's transaction that enqueues in bulk, then rolls back
        with psycopg.connect(db_url) as caller:
            with in_transaction(caller):
                enqueue_many(app.tasks["bulk.add"].s(n) for n in range(50))
            inside = caller.execute("SELECT count(*) FROM pgjobs_broker_message").fetchone()
            caller.rollback()
        # then the messages were there inside it only, and no consumer was woken
        assert inside == (50,)
        assert count(db_url) == 0
        assert list(listening.notifies(timeout=0.5, stop_after=1)) == []


def test_inside_a_committed_transaction_everything_is_enqueued_and_woken_on_commit(db_url, app):
    with psycopg.connect(db_url, autocommit=True) as listening:
        listening.execute(f'LISTEN "{wake_channel("work")}"')
        # given a caller's transaction that enqueues 12,000 tasks in bulk (several
        # statements), then commits
        with psycopg.connect(db_url) as caller:
            with in_transaction(caller):
                results = enqueue_many(app.tasks["bulk.add"].s(n) for n in range(12_000))
            heard_before_commit = list(listening.notifies(timeout=0.2, stop_after=1))
            caller.commit()
        # then all of them are stored, and the queue's consumers are woken on commit only
        assert count(db_url) == len(results) == 12_000
        assert heard_before_commit == []
        notified = list(listening.notifies(timeout=0.5))
        assert [n.channel for n in notified] == [wake_channel("work")]


@pytest.mark.parametrize("bad, error, words", [
    ("bulk.add", TypeError, "item 2 is a str, not a task signature"),
    (None, TypeError, "item 2 is None, not a task signature"),
    ("unknown", ValueError, "item 2 names task 'bulk.nope', which this Celery app does not"),
    ("arguments", TypeError, "item 2 (bulk.add): "),
    ("chain", TypeError, "item 2 is a _chain, not a task signature"),
])
def test_bad_input_says_which_item_is_wrong_and_writes_nothing(db_url, app, bad, error, words):
    add = app.tasks["bulk.add"]
    item = {"unknown": app.signature("bulk.nope"), "arguments": add.s(1, 2, 3),
            "chain": add.s(1) | add.s()}.get(bad, bad)
    # given a batch with one bad item after good ones
    with pytest.raises(error) as raised:
        enqueue_many([add.s(1), add.s(2), item, add.s(4)])
    # then the error names the item and what is wrong, in one line, and nothing is stored
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)
    assert count(db_url) == 0


def test_a_task_class_with_its_own_apply_async_sends_through_it(db_url, app):
    # given a task whose class adds a header in its own apply_async
    class Tagged(app.Task):
        def apply_async(self, args=None, kwargs=None, **options):
            options.setdefault("headers", {})["tagged"] = True
            return super().apply_async(args, kwargs, **options)

    tagged = app.task(name="bulk.tagged", base=Tagged)(_add)

    # when it is enqueued in bulk
    (result,) = enqueue_many([tagged.s(1)])

    # then its message carries the header, and nothing was sent around the batch
    (row,) = stored(db_url)
    assert row["payload"]["headers"]["tagged"] is True
    assert row["payload"]["headers"]["id"] == result.id


def test_a_lost_connection_raises_kombus_error_writes_nothing_and_the_call_can_be_retried(
        db_url, app):
    # given a producer whose broker connection the server has just ended
    add = app.tasks["bulk.add"]
    enqueue_many([add.s(0)])
    sql(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'pgjobs-broker'")

    # when a batch is sent, then kombu's OperationalError says so, and nothing is written
    with pytest.raises(OperationalError):
        enqueue_many([add.s(n) for n in range(1, 10)])
    assert count(db_url) == 1

    # and the same call sent again writes the whole batch
    enqueue_many([add.s(n) for n in range(1, 10)])
    assert count(db_url) == 10


def test_an_empty_batch_enqueues_nothing(db_url, app):
    assert enqueue_many([]) == []
    assert count(db_url) == 0
