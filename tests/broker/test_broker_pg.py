"""PostgreSQL-only guarantees of the pgjobs transport: rows, leases, ETA, dead letters,
priorities, wake-ups and reconnection. The memory transport has none of these."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from broker_helpers import (
    PG_TRANSPORT,
    Connect,
    collect,
    kill_heartbeat,
    publish,
    rows,
    sql,
)
from kombu import Connection, Consumer, Exchange, Queue
from kombu.asynchronous import Hub
from kombu.exceptions import OperationalError
from psycopg.conninfo import make_conninfo

from broker import transport as transport_module
from tests.polling import wait_until


def test_ack_deletes_the_row(connect: Connect, db_url: str) -> None:
    # given a delivered message
    conn = connect()
    queue = Queue("acked")
    publish(conn, queue, {"n": 1})
    message = queue(conn.default_channel).get()
    assert len(rows(db_url, "acked")) == 1
    # when it is acknowledged
    message.ack()
    # then its row is gone
    assert rows(db_url, "acked") == []


def test_reject_without_requeue_moves_the_row_to_dead_letters_with_a_reason(
        connect: Connect, db_url: str) -> None:
    # given a delivered message
    conn = connect()
    queue = Queue("rejected")
    publish(conn, queue, {"n": 1})
    message = queue(conn.default_channel).get()
    # when it is rejected without requeue
    message.reject(requeue=False)
    # then it sits in the dead-letter table, with why
    dead = sql(db_url, "SELECT id, queue, reason FROM pgjobs_broker_dead_letter")
    assert dead == [(message.delivery_tag, "rejected", "rejected by its consumer without requeue")]
    assert rows(db_url, "rejected") == []


def test_closing_a_channel_releases_the_same_row_instead_of_copying_it(
        connect: Connect, db_url: str) -> None:
    # given a message delivered but not acknowledged
    holder = connect()
    queue = Queue("held")
    publish(holder, queue, {"n": 1})
    message = queue(holder.default_channel).get()
    [(row_id, consumer)] = rows(db_url, "held")
    assert consumer == holder.transport.consumer_id
    # when the holder closes its connection
    holder.release()
    # then the very same row waits again, and comes back marked as redelivered
    assert rows(db_url, "held") == [(row_id, None)]
    again = queue(connect().default_channel).get()
    assert again.delivery_tag == message.delivery_tag
    assert again.delivery_info["redelivered"] is True


def test_higher_priority_is_delivered_first_then_publication_order(connect: Connect) -> None:
    # given messages of priorities 0, 5, 9 and 5 again
    conn = connect()
    queue = Queue("prio")
    for n, priority in enumerate([0, 5, 9, 5]):
        publish(conn, queue, {"n": n}, priority=priority)
    # when they are consumed one by one
    channel = conn.default_channel
    order = [queue(channel).get(no_ack=True).payload["n"] for _ in range(4)]
    # then the highest priority comes first, equal priorities in publication order
    assert order == [2, 1, 3, 0]


def test_queues_take_turns_within_a_claim_and_priorities_hold_within_each(
        connect: Connect) -> None:
    # given a backlog in "busy" and two messages of different priorities in "quiet"
    conn = connect()
    busy, quiet = Queue("busy"), Queue("quiet")
    for n in range(10):
        publish(conn, busy, {"n": n})
    publish(conn, quiet, {}, priority=1, headers={"tag": "low"})
    publish(conn, quiet, {}, priority=9, headers={"tag": "high"})
    # when one consumer of [busy, quiet] claims four messages at once
    got = conn.transport.claim(["busy", "quiet"], 4)
    # then the queues take turns, each in its own order
    assert [row.queue for row in got] == ["busy", "quiet", "busy", "quiet"]
    assert [tag_of(row) for row in got if row.queue == "quiet"] == ["high", "low"]


def test_a_small_queue_behind_a_backlog_is_served_at_once(connect: Connect) -> None:
    # given a backlog of 200 in the queue a worker lists first, and one message in another
    conn = connect()
    backlog, small = Queue("backlog"), Queue("small")
    for n in range(200):
        publish(conn, backlog, {"n": n})
    publish(conn, small, {"n": "urgent"})
    consumer = conn.Consumer([backlog, small], callbacks=[lambda body, message: None])
    consumer.qos(prefetch_count=4)
    consumer.consume()
    # when it claims one prefetch window
    channel = conn.default_channel
    channel.deliver_ready()
    # then the small queue's message is in it
    assert "small" in {m.delivery_info["routing_key"] for m in channel.qos._delivered.values()}


def tag_of(row: Any) -> str:
    return json.loads(row.payload)["headers"]["tag"]


def test_an_eta_message_stays_in_the_table_until_shortly_before_it_is_due(
        connect: Connect, db_url: str) -> None:
    # given a message whose Celery ETA is an hour away
    conn = connect(eta_lookahead=2)
    queue = Queue("later")
    eta = datetime.now(UTC) + timedelta(hours=1)
    publish(conn, queue, {"n": 1}, headers={"eta": eta.isoformat()})
    # when a consumer asks for work now
    # then it gets nothing, and the row waits with visible_at = eta - look-ahead
    assert queue(conn.default_channel).get() is None
    [(visible_at,)] = sql(db_url, "SELECT visible_at FROM pgjobs_broker_message")
    assert visible_at == eta - timedelta(seconds=2)
    assert queue(conn.default_channel).queue_declare(passive=True).message_count == 1
    # when the periodic promotion runs before, then inside, the look-ahead window
    store = conn.transport.store
    assert store.promote(now=eta - timedelta(seconds=3)) == 0
    assert store.promote(now=eta - timedelta(seconds=1)) == 1
    # then it is handed out
    due = conn.transport.claim(["later"], 10, now=eta - timedelta(seconds=1))
    assert [row.queue for row in due] == ["later"]


def test_a_consumer_receives_an_eta_message_once_it_is_due(connect: Connect) -> None:
    # given a message due in half a second
    conn = connect(eta_lookahead=0.1)
    queue = Queue("soon")
    eta = datetime.now(UTC) + timedelta(seconds=0.5)
    publish(conn, queue, {"n": 1}, headers={"eta": eta.isoformat()})
    # when a consumer waits for it
    received = collect(conn, [queue], 1)
    # then it arrives, not before its look-ahead window
    assert [m.payload for m in received] == [{"n": 1}]
    assert datetime.now(UTC) >= eta - timedelta(seconds=0.1)


def test_an_eta_in_the_past_is_delivered_at_once(connect: Connect) -> None:
    conn = connect()
    queue = Queue("past")
    publish(conn, queue, {"n": 1}, headers={"eta": "2001-01-01T00:00:00+00:00"})
    assert queue(conn.default_channel).get().payload == {"n": 1}


def test_a_dead_consumers_messages_return_after_its_heartbeat_expires(
        connect: Connect, db_url: str) -> None:
    # given a consumer holding a message, then dying (no more heartbeats)
    holder = connect()
    queue = Queue("orphan")
    publish(holder, queue, {"n": 1})
    assert queue(holder.default_channel).get() is not None
    rescuer = connect()
    assert queue(rescuer.default_channel).get() is None  # leased, not visible
    kill_heartbeat(holder, db_url)
    # when another consumer's heartbeat sweeps for dead consumers
    wait_until(lambda: rows(db_url, "orphan")[0][1] is None)
    # then the message is delivered again, marked redelivered, and the dead row is gone
    again = queue(rescuer.default_channel).get()
    assert again.payload == {"n": 1} and again.delivery_info["redelivered"] is True
    assert sql(db_url, "SELECT id FROM pgjobs_broker_consumer WHERE id = %(id)s",
               {"id": holder.transport.consumer_id}) == []


def test_a_live_consumer_keeps_its_messages_beyond_the_visibility_timeout(
        connect: Connect, db_url: str) -> None:
    # given a consumer with a 1-second visibility timeout holding a message
    holder = connect(visibility_timeout=1, heartbeat_interval=0.1)
    queue = Queue("long")
    publish(holder, queue, {"n": 1})
    assert queue(holder.default_channel).get() is not None
    [(first_expiry,)] = sql(db_url, "SELECT expires_at FROM pgjobs_broker_consumer")
    # when well over the timeout passes while it keeps beating
    wait_until(lambda: sql(db_url, "SELECT now() > %(t)s + interval '2 seconds'",
                           {"t": first_expiry})[0][0])
    other = connect()
    other.transport.store.rescue()
    # then its lease was renewed and nobody else can take the message
    [(renewed,)] = sql(db_url, "SELECT expires_at FROM pgjobs_broker_consumer WHERE id = %(id)s",
                       {"id": holder.transport.consumer_id})
    assert renewed > first_expiry + timedelta(seconds=1)
    assert queue(other.default_channel).get() is None
    assert rows(db_url, "long")[0][1] == holder.transport.consumer_id


@pytest.mark.parametrize("payload", ["not json", '{"body": "x"}', '[1, 2]'])
def test_a_malformed_row_is_dead_lettered_and_the_queue_keeps_flowing(
        connect: Connect, db_url: str, payload: str, caplog: pytest.LogCaptureFixture) -> None:
    # given a malformed row ahead of a good message
    conn = connect()
    queue = Queue("mixed")
    queue(conn.default_channel).declare()
    sql(db_url, "INSERT INTO pgjobs_broker_message (queue, payload) VALUES ('mixed', %(p)s)",
        {"p": payload})
    publish(conn, queue, {"good": True})
    # when the queue is consumed
    received = collect(conn, [queue], 1)
    # then the good message arrives and the bad one is dead-lettered with a log line
    assert [m.payload for m in received] == [{"good": True}]
    [(reason,)] = sql(db_url, "SELECT reason FROM pgjobs_broker_dead_letter")
    assert reason.startswith("malformed: ")
    assert "moved to pgjobs_broker_dead_letter: malformed" in caplog.text


def test_a_message_delivered_too_often_is_dead_lettered(connect: Connect, db_url: str) -> None:
    # given max_deliveries 2 and a message whose consumers keep dying on it
    queue = Queue("poison")
    publish(connect(), queue, {"n": 1})
    for _ in range(2):
        conn = connect(max_deliveries=2)
        assert queue(conn.default_channel).get() is not None
        kill_heartbeat(conn, db_url)
        conn.transport.store.rescue()
    # when it is handed out a third time
    assert queue(connect(max_deliveries=2).default_channel).get() is None
    # then it is in the dead-letter table with the reason instead
    [(reason,)] = sql(db_url, "SELECT reason FROM pgjobs_broker_dead_letter")
    assert reason == "delivered 3 times without an ack (max_deliveries=2)"


def test_concurrent_consumers_never_receive_the_same_message(
        connect: Connect, db_url: str) -> None:
    # given 200 messages and two consumers on separate connections
    producer = connect()
    queue = Queue("shared")
    for n in range(200):
        publish(producer, queue, {"n": n})
    seen: list[int] = []
    lock = threading.Lock()

    def consume(conn: Connection) -> None:
        def on_message(body: Any, message: Any) -> None:
            with lock:
                seen.append(body["n"])
            message.ack()

        conn.default_channel.basic_qos(0, 10, False)
        with Consumer(conn, [queue], callbacks=[on_message]):
            deadline = time.monotonic() + 20
            while len(seen) < 200 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass

    # when both drain the queue at the same time
    threads = [threading.Thread(target=consume, args=(connect(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # then every message was received exactly once
    assert sorted(seen) == list(range(200))


def test_a_claim_takes_no_more_than_the_prefetch_window(connect: Connect, db_url: str) -> None:
    # given five waiting messages and a consumer with prefetch 2
    conn = connect()
    queue = Queue("window")
    for n in range(5):
        publish(conn, queue, {"n": n})
    received = []
    conn.default_channel.basic_qos(0, 2, False)
    with Consumer(conn, [queue], callbacks=[lambda body, message: received.append(body)]):
        # when it drains without acknowledging
        conn.drain_events(timeout=2)
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.5)
    # then it holds exactly two
    assert len(received) == 2
    held = [row for row in rows(db_url, "window") if row[1] is not None]
    assert len(held) == 2


def test_a_no_ack_consumer_removes_messages_as_they_are_delivered(
        connect: Connect, db_url: str) -> None:
    conn = connect()
    queue = Queue("fire-and-forget")
    publish(conn, queue, {"n": 1})
    assert len(collect(conn, [queue], 1, ack=False, no_ack=True)) == 1
    assert rows(db_url, "fire-and-forget") == []


def test_an_auto_delete_queue_goes_when_its_consumer_dies(connect: Connect, db_url: str) -> None:
    # given an auto-delete queue bound to a fanout exchange, consumed by a consumer that dies
    owner = connect()
    exchange = Exchange("broadcast", "fanout")
    queue = Queue("replies", exchange, auto_delete=True)
    with Consumer(owner, [queue]):
        publish(owner, queue, {"n": 1})
        kill_heartbeat(owner, db_url)
        # when another consumer's heartbeat sweeps for dead consumers
        survivor = connect()
        survivor.transport.start_consuming("elsewhere")
        wait_until(lambda: not sql(db_url, "SELECT 1 FROM pgjobs_broker_queue "
                                            "WHERE name = 'replies'"))
    # then its queue, binding and messages are gone, and broadcasts no longer reach it
    assert sql(db_url, "SELECT queue FROM pgjobs_broker_binding") == []
    survivor.Producer().publish({"n": 2}, exchange=exchange, routing_key="")
    assert rows(db_url, "replies") == []


def test_an_auto_delete_queue_goes_when_its_consumer_cancels(
        connect: Connect, db_url: str) -> None:
    conn = connect()
    queue = Queue("transient", Exchange("transient-x", "direct"), "t", auto_delete=True)
    with Consumer(conn, [queue]):
        assert sql(db_url, "SELECT name FROM pgjobs_broker_queue") == [("transient",)]
    assert sql(db_url, "SELECT name FROM pgjobs_broker_queue") == []
    assert sql(db_url, "SELECT queue FROM pgjobs_broker_binding") == []


def test_deleting_a_queue_removes_its_bindings(connect: Connect, db_url: str) -> None:
    # given a bound queue, deleted
    conn = connect()
    exchange = Exchange("x-del", "direct")
    queue = Queue("q-del", exchange, "rk")
    queue(conn.default_channel).declare()
    queue(conn.default_channel).delete()
    # when a message is published through its old binding
    conn.Producer().publish({"n": 1}, exchange=exchange, routing_key="rk")
    # then no copy is stored anywhere
    assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_message") == [(0,)]


def test_a_message_is_woken_through_the_event_loop(connect: Connect) -> None:
    # given a consumer registered with kombu's event loop, as Celery's worker does
    from kombu.asynchronous import Hub

    consumer_conn, producer_conn = connect(polling_interval=30), connect()
    queue = Queue("looped")
    queue(producer_conn.default_channel).declare()
    hub = Hub()
    received: list[Any] = []
    try:
        consumer_conn.transport.register_with_event_loop(consumer_conn.connection, hub)
        with Consumer(consumer_conn, [queue], callbacks=[lambda b, m: received.append(b)]):
            loop = hub.create_loop()
            next(loop)
            # when a message is published (polling is 30 s away: only NOTIFY can wake it)
            publish(producer_conn, queue, {"n": 1})
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                next(loop)
        # then the loop delivers it
        assert received == [{"n": 1}]
    finally:
        consumer_conn.release()
        hub.close()


@pytest.mark.parametrize(("options", "complaint"), [
    ({"visibility_timeout": "soon"}, "visibility_timeout must be a number from 1 to 86400, "
                                     "got 'soon'"),
    ({"visibility_timeout": "inf"}, "visibility_timeout must be a number from 1 to 86400"),
    ({"visibility_timeout": float("nan")}, "visibility_timeout must be a number from 1"),
    ({"visibility_timeout": 1e13}, "visibility_timeout must be a number from 1 to 86400"),
    ({"visibility_timeout": 0.001}, "visibility_timeout must be a number from 1 to 86400"),
    ({"polling_interval": 0}, "polling_interval must be a number from 0.01 to 3600"),
    ({"claim_batch_size": 2.5}, "claim_batch_size must be a whole number from 1 to 10000"),
    ({"max_deliveries": True}, "max_deliveries must be a whole number"),
    ({"fault_timeout": 1}, "fault_timeout must be a number from 2 to 600"),
    ({"visibility_timeout": 10, "heartbeat_interval": 6},
     "heartbeat_interval must be at most half of visibility_timeout, got 6 and 10"),
    ({"direct_url": "host=db password=s3cret x"},
     "^broker transport option direct_url is not a PostgreSQL URL: host=db password=\\*\\* x;"),
])
def test_options_are_validated_with_one_line_naming_the_option(
        db_url: str, options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        _ = Connection(db_url, transport=PG_TRANSPORT, transport_options=options).transport


def test_synchronous_commit_is_applied_to_the_working_session(connect: Connect) -> None:
    conn = connect(synchronous_commit="off")
    session = conn.transport.store.connect()
    assert session.execute("SHOW synchronous_commit").fetchone() == ("off",)


def test_the_listen_connection_uses_the_direct_url(connect: Connect, db_url: str) -> None:
    # A direct URL naming another database shows which session went where.
    conn = connect(direct_url=make_conninfo(db_url, dbname="postgres"))
    transport = conn.transport
    transport.listener.ensure()
    store = transport.store.connect()
    databases = dict(store.execute("SELECT pid, datname FROM pg_stat_activity").fetchall())
    assert databases[transport.listener.backend_pid] == "postgres"
    assert databases[store.info.backend_pid] == store.info.dbname != "postgres"


def test_an_unknown_synchronous_commit_is_refused_by_name(db_url: str) -> None:
    with pytest.raises(ValueError, match="synchronous_commit must be one of"):
        _ = Connection(db_url, transport=PG_TRANSPORT,
                       transport_options={"synchronous_commit": "maybe"}).transport


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cret@db.example:5432/jobs", "postgresql://app:**@db.example:5432/jobs"),
    ("postgresql://app@db.example/jobs?sslmode=require&password=s3cret",
     "postgresql://app@db.example/jobs?sslmode=require&password=**"),
])
def test_the_password_never_appears_in_the_displayed_url(url: str, shown: str) -> None:
    # given a broker URL carrying a password, in its user part or as a libpq parameter
    conn = Connection(url, transport=PG_TRANSPORT)
    # when it is displayed (Celery's banner and connection log lines)
    # then the password is masked
    assert conn.as_uri() == shown


def test_a_database_without_the_broker_tables_says_how_to_fix_it(db_url: str) -> None:
    sql(db_url, "DROP TABLE pgjobs_broker_message CASCADE")
    conn = Connection(db_url, transport=PG_TRANSPORT)
    try:
        with pytest.raises(OperationalError, match="run `pgjobs migrate`"):
            conn.ensure_connection(max_retries=0)
    finally:
        conn.release()


def test_the_queue_tables_are_vacuumed_after_a_fixed_number_of_dead_rows(db_url: str) -> None:
    # the migrations give the busiest tables vacuum settings that do not grow with their size
    options = dict(sql(db_url, "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                               "('pgjobs_broker_message', 'pgjobs_broker_consumer')"))
    assert "autovacuum_vacuum_scale_factor=0" in options["pgjobs_broker_message"]
    assert "autovacuum_vacuum_threshold=5000" in options["pgjobs_broker_message"]
    assert "autovacuum_vacuum_scale_factor=0" in options["pgjobs_broker_consumer"]


def test_a_worker_warns_once_when_its_queue_table_is_not_vacuumed(
        db_url: str, connect: Connect, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given a message table that autovacuum skips, and a process that has not checked yet
    sql(db_url, "ALTER TABLE pgjobs_broker_message SET (autovacuum_enabled = false)")
    monkeypatch.setattr(transport_module, "_VACUUM_CHECKED", set())
    # when two consumers join an event loop, as a worker's do
    for _ in range(2):
        hub = Hub()
        try:
            connect().transport.register_with_event_loop(None, hub)
        finally:
            hub.close()
    # then one warning says why claims will slow down (the table's setting, or the server's
    # where the whole server runs without autovacuum)
    warnings = [r.getMessage() for r in caplog.records if "dead rows" in r.getMessage()]
    assert len(warnings) == 1
    assert ("autovacuum_enabled = false" in warnings[0]
            or "the server runs with autovacuum = off" in warnings[0])



def test_a_statement_on_another_thread_leaves_this_threads_rows_alone(db_url: str) -> None:
    from broker.store import Store

    # given one store (one session) and two queues of different lengths
    store = Store(db_url)
    for queue, length in (("short", 1), ("long", 3)):
        store.declare_queue(queue, False, None)
        for n in range(length):
            store.publish("", queue, {"body": str(n), "properties": {}}, 0.0)
    # when this thread's statement has run, and another thread runs one before its rows are read
    mine = store._execute("size", {"queue": "short"})
    theirs: list[int] = []
    other = threading.Thread(target=lambda: theirs.append(store.size("long")))
    other.start()
    other.join()
    # then each thread reads the answer to its own statement
    try:
        assert (mine.fetchone(), theirs) == ((1,), [3])
    finally:
        store.close()
