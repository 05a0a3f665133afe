"""Chords joined by a counter row, in the transaction that stores each part's result.

Every part's transaction first locks its chord's ``pgjobs_chord`` row, so the parts of one
chord finish one after the other. A part is recorded in ``pgjobs_chord_part`` under its task
id and header position, once however often it runs; the part whose record completes the
count marks the chord fired and sends the callback (or its errback) before that same commit.

When the broker is pgjobs' transport on the same database, the callback's message is
inserted through this transaction (:func:`broker.in_transaction`): the part's result, the
count and the callback commit together or not at all, so the callback is sent exactly once,
even when the part's worker dies and the part runs again. With any other broker the
callback is published just before the commit; a crash between the two sends it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from celery import states
from celery.backends.base import _create_chord_error_with_cause
from celery.canvas import maybe_signature
from celery.exceptions import ChordError
from celery.result import GroupResult

from broker.context import in_transaction
from broker.results.connection import run

logger = logging.getLogger(__name__)


def is_part(request: Any) -> bool:
    """Whether ``request`` is a task of a chord's header."""
    return bool(request is not None and getattr(request, "chord", None)
                and getattr(request, "group", None) and getattr(request, "id", None))


def count_part(backend: Any, conn: psycopg.Connection, request: Any, state: str,
               encoded_result: Any) -> None:
    """Record one finished part (inside the caller's transaction); fire if it is the last."""
    group_id = request.group
    (fired,) = run(conn, "chord_lock", {"group_id": group_id}).fetchone()
    if fired:
        return  # a part that ran again after the callback was sent
    row = run(conn, "chord_count_part", {
        "group_id": group_id, "part_key": f"{request.id}:{request.group_index}",
        "group_index": request.group_index, "state": state,
        "result": backend._bytes(encoded_result),
    }).fetchone()
    if row is not None and row[0]:
        with _publishing_through(backend, conn):
            _fire(backend, conn, group_id, maybe_signature(request.chord, app=backend.app))


def _fire(backend: Any, conn: psycopg.Connection, group_id: str, callback: Any) -> None:
    try:
        values = _header_values(backend, conn, group_id)
    except ChordError as exc:
        logger.error("Chord %r raised: %r", group_id, exc)
        backend.chord_error_from_stack(callback, exc)
    else:
        _send(backend, conn, group_id, callback, values)
    run(conn, "chord_drop_parts", {"group_id": group_id})


def _send(backend: Any, conn: psycopg.Connection, group_id: str, callback: Any,
          values: list[Any]) -> None:
    try:
        with conn.transaction():  # a savepoint: a failed send leaves nothing half-written
            callback.delay(values)
    except Exception as exc:  # the callback's errback must hear of it, as in Celery
        logger.exception("Chord callback for %r raised: %r", group_id, exc)
        backend.chord_error_from_stack(callback, ChordError(f"Callback error: {exc!r}"))


def _header_values(backend: Any, conn: psycopg.Connection, group_id: str) -> list[Any]:
    """The header's results in header order; ChordError names a part that failed."""
    header = backend.restore_group(group_id, cache=False)
    if header is not None:
        return _nested_values(backend, header)
    values = []
    for part_key, state, payload in run(conn, "chord_parts", {"group_id": group_id}):
        value = backend._decoded(payload)
        if state in states.PROPAGATE_STATES:
            _raise_dependency_error(part_key.rsplit(":", 1)[0], backend.exception_to_python(value))
        values.append(value)
    return values


def _nested_values(backend: Any, header: GroupResult) -> list[Any]:
    """Values of a header holding groups (saved by ``apply_chord``), nested like it."""
    metas = {meta["task_id"]: meta for meta in backend.metas(_leaf_ids(header))}

    def value_of(node: Any) -> Any:
        if isinstance(node, GroupResult):
            return [value_of(child) for child in node.results]
        meta = metas.get(node.id)
        if meta is None or meta["status"] not in states.READY_STATES:
            raise ChordError(f"Dependency {node.id} has no result")
        if meta["status"] in states.PROPAGATE_STATES:
            _raise_dependency_error(node.id, meta["result"])
        return meta["result"]

    return [value_of(node) for node in header.results]


def _leaf_ids(node: Any) -> Iterator[str]:
    if isinstance(node, GroupResult):
        for child in node.results:
            yield from _leaf_ids(child)
    else:
        yield node.id


def _raise_dependency_error(task_id: str, exc: Any) -> None:
    raise _create_chord_error_with_cause(
        message=f"Dependency {task_id} raised {exc!r}", original_exc=exc)


@contextmanager
def _publishing_through(backend: Any, conn: psycopg.Connection) -> Iterator[None]:
    """Publish through ``conn`` when the broker is pgjobs' transport on this database."""
    with in_transaction(conn) if backend.broker_shares_database else nullcontext():
        yield
