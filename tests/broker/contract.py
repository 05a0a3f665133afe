"""The behaviour every kombu transport pgjobs relies on must show, transport-neutral.

:class:`TransportContract` is run against pgjobs' PostgreSQL transport and against kombu's
``memory://`` transport; the latter checks that the tests themselves are right.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from broker_helpers import collect
from kombu import Connection, Exchange, Queue


class TransportContract:
    """Subclasses provide the ``connect`` fixture: a factory of fresh kombu connections."""

    @pytest.fixture
    def connect(self) -> Callable[[], Connection]:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_a_published_message_is_consumed_once_with_its_body_and_headers(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given a declared queue
        conn = connect()
        queue = Queue(names("q"), Exchange(names("x"), "direct"), "rk")
        # when a message is published to it and a consumer drains it
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="rk",
                                declare=[queue], headers={"h": "v"})
        received = collect(conn, [queue], 1)
        # then exactly that message arrives, and nothing is left
        assert [(m.payload, m.headers["h"]) for m in received] == [({"n": 1}, "v")]
        assert queue(conn.default_channel).queue_declare(passive=True).message_count == 0

    def test_acked_message_is_not_delivered_again(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given a message consumed and acknowledged
        conn = connect()
        queue = Queue(names("q"))
        conn.Producer().publish({"n": 1}, routing_key=queue.name, declare=[queue])
        assert len(collect(conn, [queue], 1)) == 1
        # when another connection looks for it
        # then it is gone
        assert queue(connect().default_channel).get() is None

    def test_reject_with_requeue_returns_the_message_at_once(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given a delivered message
        conn = connect()
        queue = Queue(names("q"))
        conn.Producer().publish({"n": 1}, routing_key=queue.name, declare=[queue])
        message = queue(conn.default_channel).get()
        assert message is not None
        # when it is rejected with requeue
        message.reject(requeue=True)
        # then it can be received again
        again = queue(connect().default_channel).get()
        assert again is not None and again.payload == {"n": 1}

    def test_reject_without_requeue_drops_the_message_from_its_queue(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given a delivered message
        conn = connect()
        queue = Queue(names("q"))
        conn.Producer().publish({"n": 1}, routing_key=queue.name, declare=[queue])
        message = queue(conn.default_channel).get()
        assert message is not None
        # when it is rejected without requeue
        message.reject(requeue=False)
        # then its queue no longer has it
        assert queue(connect().default_channel).get() is None

    def test_direct_routing_across_connections(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given two queues bound to a direct exchange by one connection
        consumer_conn, producer_conn = connect(), connect()
        exchange = Exchange(names("direct"), "direct")
        red, blue = Queue(names("red"), exchange, "red"), Queue(names("blue"), exchange, "blue")
        for queue in (red, blue):
            queue(consumer_conn.default_channel).declare()
        # when another connection publishes with routing key "blue"
        producer_conn.Producer().publish({"to": "blue"}, exchange=exchange, routing_key="blue")
        # then only the blue queue receives it
        assert [m.payload for m in collect(consumer_conn, [blue], 1)] == [{"to": "blue"}]
        assert red(consumer_conn.default_channel).get() is None

    def test_topic_routing_across_connections(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given queues bound with topic patterns by one connection
        consumer_conn, producer_conn = connect(), connect()
        exchange = Exchange(names("topic"), "topic")
        words = Queue(names("words"), exchange, "task.*.done")
        tree = Queue(names("tree"), exchange, "task.#")
        for queue in (words, tree):
            queue(consumer_conn.default_channel).declare()
        # when another connection publishes two keys
        producer = producer_conn.Producer()
        producer.publish({"k": 1}, exchange=exchange, routing_key="task.email.done")
        producer.publish({"k": 2}, exchange=exchange, routing_key="task.email.sent.ok")
        # then "*" matched one word and "#" matched several
        assert [m.payload for m in collect(consumer_conn, [words], 1)] == [{"k": 1}]
        assert words(consumer_conn.default_channel).get() is None
        got = sorted(m.payload["k"] for m in collect(consumer_conn, [tree], 2))
        assert got == [1, 2]

    def test_fanout_delivers_a_copy_to_every_bound_queue(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given two queues bound to a fanout exchange, each by its own connection
        first, second, producer_conn = connect(), connect(), connect()
        exchange = Exchange(names("fanout"), "fanout")
        one, two = Queue(names("one"), exchange), Queue(names("two"), exchange)
        one(first.default_channel).declare()
        two(second.default_channel).declare()
        # when a third connection broadcasts once
        producer_conn.Producer().publish({"all": True}, exchange=exchange, routing_key="")
        # then each queue receives its own copy
        assert [m.payload for m in collect(first, [one], 1)] == [{"all": True}]
        assert [m.payload for m in collect(second, [two], 1)] == [{"all": True}]

    def test_names_are_data_whatever_characters_they_hold(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given a queue and exchange whose names hold quotes, SQL and non-ASCII text
        conn = connect()
        hostile = names("q'; DROP TABLE pgjobs_broker_message; -- \"é\" " + "x" * 200)
        queue = Queue(hostile, Exchange(hostile + ".x", "topic"), "a.'b'.*")
        queue(conn.default_channel).declare()
        # when a message is routed and consumed through them
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="a.'b'.c")
        # then it arrives like any other
        assert [m.payload for m in collect(conn, [queue], 1)] == [{"n": 1}]

    def test_size_is_exact(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given three messages published to a queue
        conn = connect()
        queue = Queue(names("q"))
        for n in range(3):
            conn.Producer().publish({"n": n}, routing_key=queue.name, declare=[queue])
        # when its size is asked
        # then it is exactly three
        assert queue(conn.default_channel).queue_declare(passive=True).message_count == 3

    def test_purge_removes_waiting_messages_and_counts_them(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given two waiting messages
        conn = connect()
        queue = Queue(names("q"))
        for n in range(2):
            conn.Producer().publish({"n": n}, routing_key=queue.name, declare=[queue])
        # when the queue is purged
        purged = queue(conn.default_channel).purge()
        # then both are gone
        assert purged == 2
        assert queue(conn.default_channel).get() is None

    def test_deleted_queue_loses_its_messages(
            self, connect: Callable[[], Connection], names: Callable[[str], str]) -> None:
        # given a bound queue holding a message
        conn = connect()
        queue = Queue(names("q"), Exchange(names("x"), "direct"), "rk")
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="rk",
                                declare=[queue])
        # when the queue is deleted and declared afresh
        queue(conn.default_channel).delete()
        declared = queue(conn.default_channel).queue_declare()
        # then it is empty
        assert declared.message_count == 0
