"""Everything Celery users read from results: states, tracebacks, extended fields, children,
forget(), saved groups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery import group
from celery.exceptions import TaskRevokedError
from celery.result import GroupResult

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

WAIT = 60


def test_every_state_is_stored_and_read_back(results):
    results.start_worker(concurrency=2)
    app = results.app
    tasks = app.tasks

    # a task nobody sent is PENDING
    assert app.AsyncResult("never-sent").state == "PENDING"

    # a running task is STARTED (task_track_started), then SUCCESS
    running = tasks["rt.sleep"].delay(3, "done")
    wait_until(lambda: running.state == "STARTED", WAIT, "STARTED", results.logs)
    assert running.get(timeout=WAIT) == "done" and running.state == "SUCCESS"

    # a retried task is RETRY until its second try succeeds
    retried = tasks["rt.retry_once"].delay()
    wait_until(lambda: retried.state == "RETRY", WAIT, "RETRY", results.logs)
    assert "first try" in repr(retried.result)
    assert retried.get(timeout=WAIT) == "second try"

    # a failed task is FAILURE, with its exception and traceback
    failed = tasks["rt.fail"].delay("broken")
    with pytest.raises(ValueError, match="broken"):
        failed.get(timeout=WAIT)
    assert failed.state == "FAILURE"
    assert "raise ValueError(message)" in failed.traceback

    # a revoked task is REVOKED, and its waiter is told so
    revoked = tasks["rt.add"].apply_async((1, 2), countdown=4)
    revoked.revoke()
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=WAIT)
    assert revoked.state == "REVOKED"


def test_extended_fields_children_forget_and_saved_groups(results):
    worker = results.start_worker(concurrency=2)
    app = results.app

    # result_extended: name, arguments, worker and queue are stored with the result
    spawned = app.tasks["rt.spawn"].delay()
    assert spawned.get(timeout=WAIT) == "spawned"
    spawned = app.AsyncResult(spawned.id)
    assert (spawned.name, spawned.args, spawned.kwargs) == ("rt.spawn", [], {})
    assert spawned.worker.startswith(f"{worker.name}@")
    assert spawned.queue == results.queue
    assert abs(spawned.date_done - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=5)

    # AsyncResult.children: the task it sent
    (child,) = spawned.children
    assert child.get(timeout=WAIT) == 2

    # forget() deletes the stored result
    spawned.forget()
    assert app.AsyncResult(spawned.id).state == "PENDING"
    assert results.query("SELECT count(*) FROM celery_taskmeta WHERE task_id = %s",
                         (spawned.id,)) == [(0,)]

    # GroupResult.save() and restore()
    sent = group(app.tasks["rt.add"].s(n, n) for n in range(3))()
    sent.save()
    restored = GroupResult.restore(sent.id, app=app)
    assert [result.id for result in restored.results] == [result.id for result in sent.results]
    assert restored.get(timeout=WAIT) == [0, 2, 4]
    restored.delete()
    assert GroupResult.restore(sent.id, app=app) is None
