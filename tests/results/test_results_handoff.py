"""A pool child's result rides with its message's acknowledgement (``broker.results.handoff``):
real ``celery worker`` processes, results read from the table itself."""

from __future__ import annotations

import pytest
from celery import Celery

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

WAIT = 60
READY = ("SELECT count(*) FROM celery_taskmeta WHERE status IN ('SUCCESS', 'FAILURE') "
         "AND task_id LIKE %s")
RESULTS_SESSIONS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'pgjobs-results%%'")


def _publisher(results) -> Celery:
    """An app that only sends: it has no result backend, so it opens no results session of
    its own (the worker's backend stores what the tasks return)."""
    app = Celery("handoff-publisher", set_as_current=False)
    app.conf.update(broker_url=results.database_url,
                    broker_transport="broker.transport:Transport",
                    task_default_queue=results.queue, task_serializer="json")
    return app


def test_results_ride_with_their_acks_and_the_pool_opens_no_results_session(results):
    # Given a worker that stores only ready states (no STARTED), and a backlog of tasks,
    # some of which fail
    publisher = _publisher(results)
    for n in range(30):
        publisher.send_task("rt.add", (n, n), task_id=f"handoff-add-{n}")
    for n in range(5):
        publisher.send_task("rt.fail", (f"boom {n}",), task_id=f"handoff-fail-{n}")
    publisher.close()
    results.env["RESULTS_TEST_TRACK_STARTED"] = "0"
    worker = results.start_worker(concurrency=2)

    # When the worker drains them
    wait_until(lambda: results.query(READY, ("handoff-%",)) == [(35,)] and results.queue_empty(),
               WAIT, "every result and every ack", results.logs)

    # Then every result, success or failure with its traceback, is stored...
    stored = dict((task_id, (status, value, traceback)) for task_id, status, value, traceback
                  in results.query("SELECT task_id, status, convert_from(result, 'UTF8'), "
                                   "traceback FROM celery_taskmeta"))
    assert {f"handoff-add-{n}": stored[f"handoff-add-{n}"][:2] for n in range(30)} == {
        f"handoff-add-{n}": ("SUCCESS", str(2 * n)) for n in range(30)}
    for n in range(5):
        status, _, traceback = stored[f"handoff-fail-{n}"]
        assert status == "FAILURE"
        assert f"ValueError: boom {n}" in traceback
    # ...by the worker's main process, with the acks: no process of the worker ever opened a
    # session for results
    assert results.query(RESULTS_SESSIONS) == [(0,)], worker.tail()


def test_a_result_in_the_hands_of_a_worker_that_died_is_stored_by_the_next_run(results):
    # Given a task that kills its whole worker (SIGKILL) once, after its pool child handed
    # its result over and before its message was acknowledged
    results.env["RESULTS_TEST_TRACK_STARTED"] = "0"
    first = results.start_worker("first", concurrency=1)
    sent = results.app.tasks["rt.part"].delay("alone", "die-after-commit")
    first.process.wait(timeout=WAIT)
    # the result went down with the worker: the ack it rode with never committed
    assert results.query("SELECT status FROM celery_taskmeta WHERE task_id = %s",
                         (sent.id,)) == []

    # When another worker takes the message back and runs the task again
    results.start_worker("second", concurrency=1)

    # Then the task ran twice, and its result is stored once the second run is acknowledged
    assert sent.get(timeout=WAIT) == "die-after-commit"
    wait_until(results.queue_empty, WAIT, "the message to be acknowledged", results.logs)
    assert results.runs("died") == [("alone", None)]
    assert results.runs("part") == [("alone", "'die-after-commit'")] * 2
    assert results.query("SELECT status FROM celery_taskmeta WHERE task_id = %s",
                         (sent.id,)) == [("SUCCESS",)]


def test_a_pool_child_lost_after_its_result_was_handed_over_is_not_run_again(results):
    # Given a task whose pool process dies (SIGKILL) once, after it handed its result over and
    # before it told the worker that the task was done
    results.env["RESULTS_TEST_TRACK_STARTED"] = "0"
    worker = results.start_worker(concurrency=1)

    # When it runs
    sent = results.app.tasks["rt.part"].delay("lost", "child-dies-after-result")

    # Then the worker sees that it succeeded before its process was lost, as Celery does for a
    # stored success: the task ran once, its result is stored and its message acknowledged
    assert sent.get(timeout=WAIT) == "child-dies-after-result"
    wait_until(results.queue_empty, WAIT, "the message to be acknowledged", results.logs)
    assert results.runs("died") == [("lost", None)]
    assert results.runs("part") == [("lost", "'child-dies-after-result'")]
    assert "succeeded before the worker was lost" in worker.text()
