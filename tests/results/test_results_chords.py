"""Chords are joined natively: each callback runs exactly once, with no chord_unlock task.

Parts and callbacks record every run in ``results_test_runs``; a duplicate fails the test.
"""

from __future__ import annotations

from collections import Counter

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError

from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

WAIT = 60


def _chord(app, key: str, values: list, callback=None):
    part = app.tasks["rt.part"]
    return chord([part.s(key, value) for value in values],
                 callback or app.tasks["rt.collect"].s(key))


def test_chords_whose_parts_finish_together_call_back_exactly_once(results):
    # given four pool processes finishing the instant parts of many chords at the same time
    worker = results.start_worker(concurrency=4)
    app = results.app
    keys = [f"c{n}" for n in range(6)]

    # when the chords run
    sent = [_chord(app, key, list(range(10)))() for key in keys]

    # then every callback got its header's results in order, and ran once
    assert [result.get(timeout=WAIT) for result in sent] == [list(range(10))] * len(keys)
    assert Counter(key for key, _ in results.runs("callback")) == dict.fromkeys(keys, 1)
    assert Counter(key for key, _ in results.runs("part")) == dict.fromkeys(keys, 10)
    # and no chord_unlock task polled for them
    assert "celery.chord_unlock" not in worker.text()


def test_a_part_that_runs_again_after_its_worker_died_does_not_call_back_twice(results):
    # given a chord whose last part kills its worker (SIGKILL) after its result, count and
    # callback were committed and before its message was acknowledged
    first = results.start_worker("first", concurrency=1)
    sent = _chord(results.app, "kill", [1, 2, "die-after-commit"])()
    first.process.wait(timeout=WAIT)

    # when another worker takes the unacknowledged part back and runs it again
    results.start_worker("second", concurrency=2)

    # then the part ran twice, and the callback once
    assert sent.get(timeout=WAIT) == [1, 2, "die-after-commit"]
    wait_until(lambda: _runs_of(results, "'die-after-commit'") == 2, WAIT,
               "the part to run again", results.logs)
    wait_until(results.queue_empty, WAIT, "every message to be acknowledged", results.logs)
    assert results.runs("died") == [("kill", None)]
    assert results.runs("callback") == [("kill", "[1, 2, 'die-after-commit']")]


def _runs_of(results, value: str) -> int:
    return [value_ for _, value_ in results.runs("part")].count(value)


def test_a_failing_part_reaches_the_callbacks_errback_once(results):
    results.start_worker(concurrency=2)
    app = results.app
    callback = app.tasks["rt.collect"].s("failing").on_error(app.tasks["rt.on_error"].s("failing"))

    # when one part of a chord fails
    sent = _chord(app, "failing", [1, "fail:boom", 3], callback)()

    # then the callback's result is the chord error, the errback ran once, the callback never
    with pytest.raises(ChordError, match="boom"):
        sent.get(timeout=WAIT, follow_parents=False)
    (errback,) = results.runs("errback")
    assert errback[0] == "failing" and "boom" in errback[1]
    assert results.runs("callback") == []


def test_chains_and_groups_of_chords_call_each_callback_once(results):
    results.start_worker(concurrency=2)
    app = results.app
    collect = app.tasks["rt.collect"]

    # when a chord runs inside a chain, and two chords inside a group
    chained = chain(_chord(app, "chained", [1, 2]), collect.s("after"))()
    grouped = group(_chord(app, "g1", [3, 4]), _chord(app, "g2", [5]))()

    # then each gets its results, and each callback ran exactly once
    assert chained.get(timeout=WAIT) == [1, 2]
    assert grouped.get(timeout=WAIT) == [[3, 4], [5]]
    assert Counter(key for key, _ in results.runs("callback")) == {
        "chained": 1, "after": 1, "g1": 1, "g2": 1}
