"""Results that a worker's pool children hand to its main process, to be stored in the
transaction that acknowledges their tasks' messages (see :mod:`broker.riders`).

This applies to a result in a ready state (SUCCESS, FAILURE, REVOKED) of a task whose message
is acknowledged after it ran (``acks_late``) by pgjobs' transport on the backend's own
database. The child then makes no round trip for it. The worker's main process stores the
row in the claim that deletes the message, together with the rows of the other tasks it
acknowledges there, and the result and the acknowledgement commit together. Waiters are woken
by that commit, as by any store.

A row that would not fit a line of ``PIPE_BUF`` bytes is stored by the child itself, as any
other result is. So is a row the table would refuse: text with a NUL character, a name longer
than its column, or a value that is not UTF-8 text (a binary result serializer). A refused
row would otherwise fail the acknowledgement's transaction with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import states
from psycopg.types.json import Json

from broker import riders
from broker.results.connection import query
from broker.riders import Statement

KIND = "result"
COLUMNS = ("task_id", "status", "result", "date_done", "traceback", "children", "name",
           "args", "kwargs", "worker", "retries", "queue")
_BYTES = ("result", "children", "args", "kwargs")
# celery_taskmeta's varchar columns, in characters.
_LENGTHS = {"task_id": 155, "status": 50, "name": 155, "worker": 155, "queue": 155}


def hand(row: dict[str, Any], request: Any) -> bool:
    """Hand ``row`` (the backend's parameters of ``store_result``) of ``request``'s task to
    the worker's main process. False: not handed over, the caller stores it."""
    if not riders.in_pool_child():
        return False
    tag = (getattr(request, "properties", None) or {}).get("delivery_tag")
    record = _record(row)
    return isinstance(tag, int) and record is not None and riders.hand(tag, KIND, record)


def held_row(task_id: str) -> dict[str, Any] | None:
    """The row of ``task_id``'s success that a pool child handed to this process and that is
    not stored yet (its message is not acknowledged yet), as :func:`hand` was given it. Only
    a success: any other outcome held may be older than what the table has."""
    for kind, record in riders.held():
        if kind == KIND and record["task_id"] == task_id and record["status"] == states.SUCCESS:
            row = {column: record[column] for column in COLUMNS}
            for column in _BYTES:
                if row[column] is not None:
                    row[column] = row[column].encode()
            if row["date_done"] is not None:
                row["date_done"] = datetime.fromisoformat(row["date_done"])
            return row
    return None


def statement(records: list[dict[str, Any]]) -> Statement:
    """The statement storing ``records``, one row per task: where a task ran more than once,
    its first success, or else its latest outcome (as ``store_results`` would keep of them
    one by one)."""
    kept: dict[str, dict[str, Any]] = {}
    for record in records:
        before = kept.get(record["task_id"])
        if before is None or _replaces(record, before):
            kept[record["task_id"]] = record
    # In task id order, as any two batches that share tasks lock their rows.
    return query("store_results"), {"rows": Json([kept[key] for key in sorted(kept)])}


def _replaces(record: dict[str, Any], before: dict[str, Any]) -> bool:
    """Whether ``record`` replaces ``before``, as ``store_results`` decides: a success stays,
    an outcome yields to a success or a newer one (ISO dates of one form compare as text)."""
    if before["status"] == states.SUCCESS:
        return False
    return (record["status"] == states.SUCCESS or before["date_done"] is None
            or (record["date_done"] or "") >= before["date_done"])


def describe(record: dict[str, Any]) -> str:
    """The subject of ``record``, for a log line."""
    return f"the {record['status']} result of task {record['task_id']}"


def _record(row: dict[str, Any]) -> dict[str, Any] | None:
    """``row`` as JSON text fields, or None when the table would refuse it."""
    record: dict[str, Any] = {}
    for column in COLUMNS:
        value = row[column]
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                value = bytes(value).decode()
            except UnicodeDecodeError:
                return None
        elif isinstance(value, datetime):
            value = value.isoformat()
        if isinstance(value, str) and not _storable(column, value):
            return None
        record[column] = value
    return record


def _storable(column: str, value: str) -> bool:
    """Whether PostgreSQL takes ``value`` in ``column``: no NUL, within the column's length.
    (Text that is not UTF-8, such as a lone surrogate in a traceback naming an undecodable
    file, :func:`broker.riders.hand` refuses as it encodes the record.)"""
    return "\x00" not in value and len(value) <= _LENGTHS.get(column, len(value))


riders.register(KIND, statement, describe)
