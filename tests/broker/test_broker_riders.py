"""Records that forked children hand to the process that forked them, to be written in the
transaction of their messages' acknowledgement (``broker.riders``): real forks, a real pipe,
a real database."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import psycopg
import pytest
from broker_helpers import Connect, publish, sql
from kombu import Queue

from broker import riders
from broker.results import handoff

PROBE = "probe"
QUEUED = "SELECT count(*) FROM pgjobs_broker_message"


def _probe_statement(records: list[dict]) -> riders.Statement:
    return "SELECT %(n)s", {"n": len(records)}


riders.register(PROBE, _probe_statement)


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


def test_a_full_pipe_refuses_records_instead_of_blocking(pipe) -> None:
    # Given a child handing records of nearly PIPE_BUF bytes while nobody takes them
    body = "x" * (riders.PIPE_BUF - 100)

    def work() -> int:
        for n in range(2000):  # more than the largest pipe holds
            if not riders.hand(n, PROBE, {"s": body}):
                return 0 if n > 0 else 2  # refused once full, never blocked
        return 1

    assert in_child(work) == 0

    # Then every record that was accepted arrives whole
    taken = riders.take(range(2000))
    assert taken and all(record == (PROBE, {"s": body}) for record in taken)


def _result(task_id: str, status: str = "SUCCESS") -> dict:
    return {"task_id": task_id, "status": status, "result": "42",
            "date_done": "2026-12-07T04:00:00", "traceback": None, "children": None,
            "name": "t.add", "args": None, "kwargs": None, "worker": "w@h", "retries": 0,
            "queue": "q"}


def test_a_handed_result_is_stored_in_the_transaction_of_its_ack_or_not_at_all(
        db_url: str, connect: Connect, pipe) -> None:
    # Given two delivered messages, and for each a result that a child handed over: the
    # second one with a status too long for its column, as no backend would send it
    conn, queue = connect(), Queue("riding")
    publish(conn, queue, {"n": 1})
    publish(conn, queue, {"n": 2})
    channel = conn.default_channel
    first, second = channel.basic_get("riding"), channel.basic_get("riding")

    def work() -> int:
        handed = [riders.hand(first.delivery_tag, handoff.KIND, _result("first")),
                  riders.hand(second.delivery_tag, handoff.KIND, _result("second", "X" * 60))]
        return 0 if all(handed) else 1

    assert in_child(work) == 0

    # When the messages are acknowledged
    first.ack()
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        second.ack()

    # Then the first result and the deletion of its message committed together, and the
    # second message, whose result the table refused, is still there
    assert sql(db_url, "SELECT task_id, status, convert_from(result, 'UTF8') "
                       "FROM celery_taskmeta") == [("first", "SUCCESS", "42")]
    assert sql(db_url, QUEUED) == [(1,)]


def test_the_results_of_a_task_that_ran_twice_keep_its_first_success(db_url: str) -> None:
    # One statement may carry several outcomes of one task: ON CONFLICT touches a row once
    statement, params = handoff.statement([_result("t", "FAILURE"), _result("t"),
                                           _result("t", "FAILURE"), _result("u", "FAILURE")])
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(statement, params)
        stored = conn.execute("SELECT task_id, status FROM celery_taskmeta "
                              "ORDER BY task_id").fetchall()
    assert stored == [("t", "SUCCESS"), ("u", "FAILURE")]


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
