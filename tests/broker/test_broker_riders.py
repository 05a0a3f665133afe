"""Records that forked children hand to the process that forked them, to be written in the
transaction of their messages' acknowledgement (``broker.riders``): real forks, a real pipe,
a real database."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from broker_helpers import Connect, backlog, collect, drain_in_loop, publish, rows, sql, turn_until
from kombu import Consumer, Queue
from kombu.message import Message
from kombu.transport.virtual import Channel

from broker import riders
from broker.results import handoff

PROBE = "probe"
QUEUED = "SELECT count(*) FROM pgjobs_broker_message"


def _probe_statement(records: list[dict]) -> riders.Statement:
    return "SELECT %(n)s", {"n": len(records)}


riders.register(PROBE, _probe_statement)
# A record whose statement is cancelled, as one that outlives the statement timeout is.
CANCELS = "cancels"
riders.register(CANCELS, lambda records: ("SELECT pg_cancel_backend(pg_backend_pid())", {}))
# A record whose statement ends its own session.
ENDS_SESSION = "ends-session"
riders.register(ENDS_SESSION,
                lambda records: ("SELECT pg_terminate_backend(pg_backend_pid())", {}))


@pytest.fixture
def pipe() -> Iterator[None]:
    """This process opened the pipe, as a worker's main process does before its pool forks."""
    riders.open_pipe()
    yield
    riders.close_pipe()


def in_child(work: Callable[[], int]) -> int:
    """Run ``work`` in a forked child; its return value is the child's exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            code = work()
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_child_hands_records_that_its_parent_takes_by_delivery_tag(pipe) -> None:
    # Given a child that hands three records over, two of them for message 1
    def work() -> int:
        handed = [riders.hand(1, PROBE, {"n": 1}), riders.hand(2, PROBE, {"n": 2}),
                  riders.hand(1, PROBE, {"n": 3})]
        return 0 if all(handed) else 1

    assert in_child(work) == 0

    # Then the parent takes each message's records, in order, once
    assert riders.take([1]) == [(PROBE, {"n": 1}), (PROBE, {"n": 3})]
    assert riders.take([1]) == []
    assert riders.take([7, 2]) == [(PROBE, {"n": 2})]


def test_a_record_too_long_for_one_atomic_write_is_refused(pipe) -> None:
    # A line over PIPE_BUF could interleave with another child's: the child keeps it
    def work() -> int:
        long = riders.hand(1, PROBE, {"s": "x" * riders.PIPE_BUF})
        short = riders.hand(1, PROBE, {"s": "x"})
        return 0 if (long, short) == (False, True) else 1

    assert in_child(work) == 0
    assert riders.take([1]) == [(PROBE, {"s": "x"})]


def test_only_a_child_of_the_pipes_process_hands_records_and_only_kinds_its_parent_knows(
        pipe) -> None:
    # The process that opened the pipe writes its own records
    assert riders.hand(1, PROBE, {"n": 0}) is False

    # A grandchild's parent never reads the pipe
    def grandchild() -> int:
        return in_child(lambda: 0 if riders.hand(1, PROBE, {"n": 1}) is False else 1)

    assert in_child(grandchild) == 0

    # A kind registered after the fork would reach a parent that cannot write it
    def late_kind() -> int:
        riders.register("late", _probe_statement)
        return 0 if riders.hand(1, "late", {"n": 2}) is False else 1

    try:
        assert in_child(late_kind) == 0
    finally:
        riders._BUILDERS.pop("late", None)
    assert riders.take([1]) == []


def test_a_full_pipe_refuses_records_instead_of_blocking(pipe, tmp_path) -> None:
    # Given a child handing records of nearly PIPE_BUF bytes while nobody takes them
    body = "x" * (riders.PIPE_BUF - 100)
    count = tmp_path / "accepted"

    def work() -> int:
        for n in range(2000):  # more than the largest pipe holds
            if not riders.hand(n, PROBE, {"s": body}):
                count.write_text(str(n))
                return 0 if n > 0 else 2  # refused once full, never blocked
        return 1

    assert in_child(work) == 0

    # Then every record that was accepted arrives whole, and only those
    taken = riders.take(range(2000))
    assert len(taken) == int(count.read_text())
    assert all(record == (PROBE, {"s": body}) for record in taken)


def _result(task_id: str, status: str = "SUCCESS") -> dict:
    return {"task_id": task_id, "status": status, "result": "42",
            "date_done": "2026-12-07T04:00:00", "traceback": None, "children": None,
            "name": "t.add", "args": None, "kwargs": None, "worker": "w@h", "retries": 0,
            "queue": "q"}


def _hand_in_child(*handed: tuple[int, str, dict]) -> None:
    """A forked child hands each ``(delivery tag, kind, record)`` over."""
    assert in_child(lambda: 0 if all(riders.hand(*one) for one in handed) else 1) == 0


STORED = "SELECT task_id, status FROM celery_taskmeta ORDER BY task_id"


def _delivered(connect: Connect, count: int) -> tuple[Channel, list[Message]]:
    """``count`` messages published to queue ``riding`` and delivered on one channel."""
    conn, queue = connect(), Queue("riding")
    for n in range(count):
        publish(conn, queue, {"n": n})
    channel = conn.default_channel
    return channel, [channel.basic_get("riding") for _ in range(count)]


def _store(db_url: str, *records: dict) -> list[tuple]:
    """Run the statement storing handed ``records``, outside any ack."""
    return sql(db_url, *handoff.statement(list(records)))


def test_a_handed_result_commits_with_its_ack_or_not_at_all(
        db_url: str, connect: Connect, pipe, caplog: pytest.LogCaptureFixture) -> None:
    # Given a delivered message whose result a child handed over, with a second record whose
    # statement ends its session, as a server restart would
    _, [message] = _delivered(connect, 1)
    _hand_in_child((message.delivery_tag, handoff.KIND, _result("first")),
                   (message.delivery_tag, ENDS_SESSION, {}))

    # When it is acknowledged: the ack fails with the connection, to be retried
    message.ack()
    assert "lost the database connection" in caplog.text

    # Then neither the result nor the deletion committed
    assert sql(db_url, STORED) == []
    assert sql(db_url, QUEUED) == [(1,)]


def test_a_record_that_outlives_the_statement_timeout_does_not_hold_back_its_ack(
        db_url: str, connect: Connect, pipe, caplog: pytest.LogCaptureFixture) -> None:
    # Given a delivered message whose result a child handed over, with a second record whose
    # statement is cancelled every time, as one that always outlives the timeout would be
    _, [message] = _delivered(connect, 1)
    _hand_in_child((message.delivery_tag, handoff.KIND, _result("first")),
                   (message.delivery_tag, CANCELS, {}))

    # When it is acknowledged
    message.ack()

    # Then the ack and the result committed, and the cancelled record is named in the log
    assert sql(db_url, QUEUED) == [(0,)]
    assert sql(db_url, STORED) == [("first", "SUCCESS")]
    assert "could not write a record of kind 'cancels' (canceling statement" in caplog.text


def test_a_record_the_table_refuses_does_not_hold_back_its_ack(
        db_url: str, connect: Connect, pipe, caplog: pytest.LogCaptureFixture) -> None:
    # Given two delivered messages, a result handed over for each, and one record more for
    # the second: a status too long for its column, as no backend would send it
    channel, [first, second] = _delivered(connect, 2)
    _hand_in_child((first.delivery_tag, handoff.KIND, _result("first")),
                   (second.delivery_tag, handoff.KIND, _result("second")),
                   (second.delivery_tag, handoff.KIND, _result("third", "X" * 60)))

    # When both are acknowledged at once
    channel.ack([first.delivery_tag, second.delivery_tag])

    # Then both messages are deleted, the results the table takes are stored, and the one it
    # refuses is named in the log
    assert sql(db_url, QUEUED) == [(0,)]
    assert sql(db_url, STORED) == [("first", "SUCCESS"), ("second", "SUCCESS")]
    assert "could not write the " + "X" * 60 + " result of task third" in caplog.text


def test_a_rejected_or_requeued_message_carries_its_records(
        db_url: str, connect: Connect, pipe) -> None:
    # Given two delivered messages, each with a result handed over
    _, [dead, again] = _delivered(connect, 2)
    _hand_in_child((dead.delivery_tag, handoff.KIND, _result("dead", "FAILURE")),
                   (again.delivery_tag, handoff.KIND, _result("again", "FAILURE")))

    # When one is rejected and the other requeued
    dead.reject()
    again.requeue()

    # Then each result was stored with its message's outcome
    assert sql(db_url, STORED) == [("again", "FAILURE"), ("dead", "FAILURE")]
    assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_dead_letter") == [(1,)]
    assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_message "
                       "WHERE consumer IS NULL") == [(1,)]


def test_in_the_event_loop_records_ride_with_the_claims_and_a_refused_one_stops_nothing(
        db_url: str, connect: Connect, looped, acks_alone: list[int], pipe,
        caplog: pytest.LogCaptureFixture) -> None:
    # Given 12 messages, consumed in the event loop with a window of 4, and a result of each
    # handed over by a child (a message's delivery tag is its id): that of message 5 one the
    # table refuses
    queue = backlog(connect, "riding-loop", 12)
    ids = [id_ for id_, _ in rows(db_url, "riding-loop")]
    _hand_in_child(*((id_, handoff.KIND, _result(f"t{n:02}", "X" * 60 if n == 5 else "SUCCESS"))
                     for n, id_ in enumerate(ids)))

    # When it drains them
    runs = drain_in_loop(db_url, *looped(), queue)

    # Then each ran once, every ack went with a claim, and every result but the refused one
    # was stored
    assert runs == {n: 1 for n in range(12)}
    assert acks_alone == []
    assert sql(db_url, STORED) == [(f"t{n:02}", "SUCCESS") for n in range(12) if n != 5]
    assert caplog.text.count("could not write") == 1


def test_records_wait_with_their_acks_through_an_outage(
        db_url: str, connect: Connect, looped, pipe) -> None:
    # Given a consumer in the event loop that acked a message whose result a child handed
    # over, its ack waiting for the loop turn's claim
    queue = backlog(connect, "riding-outage", 2)
    conn, hub = looped()
    received: list[Message] = []
    with Consumer(conn, [queue], callbacks=[lambda body, message: received.append(message)],
                  prefetch_count=1):
        turn_until(hub, lambda: len(received) == 1, "the first message")
        _hand_in_child((received[0].delivery_tag, handoff.KIND, _result("outage")))
        received[0].ack()

        # When the consuming session dies before the claim sends it
        channel = conn.default_channel
        sql(db_url, "SELECT pg_terminate_backend(%(pid)s)",
            {"pid": conn.transport.store.connect().info.backend_pid})
        assert channel.deliver_ready() == 0
        assert sql(db_url, STORED) == []

        # Then, once reconnected, the result is stored with the ack, and the next message
        # follows
        turn_until(hub, lambda: len(received) == 2, "the second message")
    assert sql(db_url, STORED) == [("outage", "SUCCESS")]
    assert sql(db_url, "SELECT count(*) FROM pgjobs_broker_message WHERE queue = "
                       "'riding-outage'") == [(1,)]


def test_the_results_of_a_task_that_ran_twice_keep_its_first_success(db_url: str) -> None:
    # One statement may carry several outcomes of one task: ON CONFLICT touches a row once
    # and the newest of the others
    later = {"date_done": "2026-12-07T04:00:00.5", "traceback": "later"}
    _store(db_url, _result("t", "FAILURE"), _result("t"), _result("t", "FAILURE"),
           {**_result("u", "FAILURE"), **later}, _result("u", "FAILURE"))
    assert sql(db_url, "SELECT task_id, status, traceback FROM celery_taskmeta "
                       "ORDER BY task_id") == [("t", "SUCCESS", None), ("u", "FAILURE", "later")]


def test_a_handed_result_older_than_the_stored_one_replaces_it_only_if_a_success(
        db_url: str) -> None:
    # Given failures the worker's main process stored while the children's results waited
    # for their acks (a lost pool process, a revoke)
    newer = "2026-12-07T04:00:05"
    _store(db_url, {**_result("lost", "FAILURE"), "date_done": newer},
           {**_result("revoked", "REVOKED"), "date_done": newer},
           {**_result("late", "FAILURE"), "date_done": "2026-12-07T03:00:00"})

    # When older results arrive with their acks: two failures, and a success
    _store(db_url, _result("revoked", "FAILURE"), _result("late", "FAILURE"), _result("lost"))

    # Then the newer failure stays, an older one is replaced, and the success is kept
    assert sql(db_url, STORED) == [("late", "FAILURE"), ("lost", "SUCCESS"),
                                   ("revoked", "REVOKED")]
    assert sql(db_url, "SELECT date_done FROM celery_taskmeta WHERE task_id = 'late'")[0][0] \
        .isoformat() == "2026-12-07T04:00:00"


class _Request:
    properties = {"delivery_tag": 5}


def _row(**changes: object) -> dict:
    row = {"task_id": "t", "status": "SUCCESS", "result": b"42", "date_done": None,
           "traceback": None, "children": None, "name": "t.add", "args": None,
           "kwargs": None, "worker": "w@h", "retries": 0, "queue": "q"}
    return {**row, **changes}


@pytest.mark.parametrize("changes", [
    {"traceback": "File '/srv/caf\udce9.py'"},  # a lone surrogate: not UTF-8
    {"traceback": "a\x00b"},
    {"name": "n" * 156},
    {"result": b"\xff\xfe"},  # a binary serializer's payload
], ids=["surrogate", "nul", "long-name", "binary"])
def test_a_result_the_table_would_refuse_is_not_handed_over(pipe, changes) -> None:
    # It would fail the acknowledgement's transaction: the child stores it itself
    def work() -> int:
        refused = handoff.hand(_row(**changes), _Request()) is False
        return 0 if refused and handoff.hand(_row(), _Request()) else 1

    assert in_child(work) == 0
    assert [fields["task_id"] for _, fields in riders.take([5])] == ["t"]


def test_records_stay_with_their_acks_when_the_connection_is_dropped(
        db_url: str, connect: Connect, looped, pipe) -> None:
    # Given a consumer in the event loop that acked a message whose result a child handed
    # over, the ack waiting for the loop turn's claim
    queue = backlog(connect, "riding-orphan", 2)
    conn, hub = looped()
    received: list[Message] = []
    with Consumer(conn, [queue], callbacks=[lambda body, message: received.append(message)],
                  prefetch_count=1):
        turn_until(hub, lambda: len(received) == 1, "the first message")
        _hand_in_child((received[0].delivery_tag, handoff.KIND, _result("orphan")))
        received[0].ack()

        # When its connection is dropped, as Celery does after a connection error
        conn.collect()

    # Then the ack, settled through the consumer the next connection adopts, took the
    # result with it, and the other message is delivered there
    assert sql(db_url, STORED) == [("orphan", "SUCCESS")]
    assert sql(db_url, QUEUED) == [(1,)]
    assert [m.payload for m in collect(connect(), [queue], 1)] == [{"n": 1}]
