"""pgjobs' Celery result backend: results in PostgreSQL, waiters woken by NOTIFY.

Selecting it in Celery::

    result_backend = "broker.results:PostgresBackend+postgresql://user:pass@host:5432/db"
    result_backend_transport_options = {"poll_interval": 2.0}   # optional

In a worker whose broker is pgjobs' transport on the same database, a pool child hands the
ready result of a late-acknowledged task to the worker's main process, which stores it in the
transaction that acknowledges the task's message (:mod:`broker.results.handoff`).

The part after ``+`` is handed to libpq as is. Results live in Celery's own
``celery_taskmeta`` and ``celery_tasksetmeta`` tables (same columns as Celery's database
backend, so what reads those keeps working); chords are counted in ``pgjobs_chord`` and
``pgjobs_chord_part``. The tables come from Alembic (``pgjobs migrate``).

Option (``result_backend_transport_options``):

``poll_interval`` (2.0)
    Seconds between safety-net reads of the rows a waiter waits for, in case a notification
    was missed. Waiters are normally woken by NOTIFY within milliseconds.
``direct_url`` (None: the backend's URL)
    A URL that reaches PostgreSQL itself, for the LISTEN connection of a process that waits
    for results. Set it when the backend's URL points at a PgBouncer in transaction mode;
    storing and reading results go through the pooler. Celery shows it whole in ``inspect
    conf``: give it without a password, and the password to
    :func:`broker.urls.remember_password` in every process that connects.
``prepared_statements`` (False)
    ``True`` prepares the backend's statements on the server: storing a result then costs
    about a third as much. Only where the backend's URL reaches PostgreSQL itself (or a
    session-pooling PgBouncer): through transaction pooling, prepared statements fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import psycopg
from celery import states
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.base import Backend
from celery.exceptions import ImproperlyConfigured, TimeoutError
from celery.result import GroupResult, result_from_tuple
from celery.utils.functional import _regen
from celery.utils.time import maybe_timedelta
from kombu.utils.encoding import ensure_bytes

from broker.options import flag
from broker.results import chords, handoff
from broker.results.colocation import broker_shares_database
from broker.results.connection import Database, run, shared
from broker.results.privacy import stores_arguments
from broker.results.waiting import ResultConsumer
from broker.transport import redact
from broker.urls import direct_url

DEFAULT_POLL_INTERVAL = 2.0
_EXTENDED = ("name", "args", "kwargs", "worker", "retries", "queue")
_ROW = ("task_id", "status", "result", "date_done", "traceback", "children", *_EXTENDED)


def _utc_naive(moment: datetime | None) -> datetime | None:
    # celery_taskmeta.date_done is a timestamp without time zone holding UTC.
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _poll_interval(options: dict[str, Any]) -> float:
    value = options.get("poll_interval", DEFAULT_POLL_INTERVAL)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if seconds <= 0:
        raise ImproperlyConfigured(
            "result_backend_transport_options poll_interval must be a positive number of "
            f"seconds, got {value!r}")
    return seconds


def _listen_conninfo(options: dict[str, Any], url: str) -> str:
    try:
        given = direct_url(options.get("direct_url"),
                           "result_backend_transport_options direct_url")
    except ValueError as error:
        raise ImproperlyConfigured(str(error)) from None
    return given or url


def _prepared_statements(options: dict[str, Any]) -> bool:
    try:
        return flag(options, "prepared_statements", "result_backend_transport_options")
    except ValueError as error:
        raise ImproperlyConfigured(str(error)) from None


class PostgresBackend(AsyncBackendMixin, Backend):
    """Celery result backend on PostgreSQL; see the module documentation."""

    ResultConsumer = ResultConsumer
    supports_native_join = True
    supports_autoexpire = False
    persistent = True

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url=url, expires_type=maybe_timedelta, **kwargs)
        if not url or not url.startswith(("postgresql://", "postgres://")):
            raise ImproperlyConfigured(
                "pgjobs results: result_backend must name a database, e.g. "
                "'broker.results:PostgresBackend+postgresql://user:pass@host/db'")
        conf = self.app.conf
        if not conf.value_set_for("result_backend_always_retry"):
            self.always_retry = True  # a dropped connection is reopened and the call retried
        if not conf.value_set_for("result_backend_max_retries"):
            self.max_retries = 3
        options = conf.get("result_backend_transport_options") or {}
        self.poll_interval = _poll_interval(options)
        self.conninfo = url
        self.listen_conninfo = _listen_conninfo(options, url)
        self.prepared_statements = _prepared_statements(options)
        # One connection per process, shared by every thread: safe to share the object too.
        self.thread_safe = True
        self._chord_parts = threading.local()
        self.result_consumer = self.ResultConsumer(
            self, self.app, self.accept, self._pending_results, self._pending_messages)

    @property
    def database(self) -> Database:
        return shared(self.conninfo, self.prepared_statements)

    @cached_property
    def broker_shares_database(self) -> bool:
        """Whether the broker publishes through pgjobs' transport on this database (see
        ``colocation``)."""
        return broker_shares_database(self.app, self.conninfo)

    @cached_property
    def acks_share_database(self) -> bool:
        """Whether workers acknowledge their messages through pgjobs' transport on this
        database (see ``colocation``)."""
        return broker_shares_database(self.app, self.conninfo, consuming=True)

    def as_uri(self, include_password: bool = False) -> str:
        return self.url if include_password else redact(self.url)

    def __reduce__(self, args: tuple = (), kwargs: dict | None = None) -> Any:
        return super().__reduce__(args, dict(kwargs or {}, url=self.url))

    # -- errors ---------------------------------------------------------------------------------

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)

    def on_backend_retryable_error(self, exc: BaseException) -> None:
        self.database.discard()

    # -- storing ----------------------------------------------------------------------------

    def _store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                      request: Any = None, **kwargs: Any) -> Any:
        params = self._row(task_id, result, state, traceback, request)
        ready = state in states.READY_STATES
        if not ready or not chords.is_part(request):
            # A pool child's result rides with its message's acknowledgement, when it can.
            if not (ready and self._acked_after_run(request) and handoff.hand(params, request)):
                self.database.execute("store_result", params)
            return result
        # A chord part: its result and its count in one transaction, and, when it completes
        # the chord, the callback too.
        with self.database.transaction() as conn:
            run(conn, "store_result", params)
            chords.count_part(self, conn, request, state, result)
        self._counted().add(request.id)
        return result

    def on_chord_part_return(self, request: Any, state: str, result: Any,
                             **kwargs: Any) -> None:
        if not chords.is_part(request):
            return
        counted = self._counted()
        if request.id in counted:
            counted.discard(request.id)
            return
        encoded = self.encode_result(result, state)  # the task ignores its result
        with self.database.transaction() as conn:
            chords.count_part(self, conn, request, state, encoded)

    def _counted(self) -> set[str]:
        """Chord parts whose count went with their result, in this thread."""
        ids = getattr(self._chord_parts, "ids", None)
        if ids is None:
            ids = self._chord_parts.ids = set()
        return ids

    def _row(self, task_id: str, result: Any, state: str, traceback: str | None,
             request: Any) -> dict[str, Any]:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request, format_date=False)
        row = {name: meta.get(name) for name in _ROW}
        row.update(task_id=task_id, ready=state in states.READY_STATES,
                   synchronous_commit=self._synchronous_commit(request, state),
                   date_done=_utc_naive(meta.get("date_done")),
                   result=self._bytes(result), children=self._bytes(meta.get("children")))
        if stores_arguments(self.app, request):
            row.update(args=self._bytes(row["args"]), kwargs=self._bytes(row["kwargs"]))
        else:
            row.update(args=None, kwargs=None)
        return row

    def _synchronous_commit(self, request: Any, state: str) -> str | None:
        """``off`` when the message's acknowledgement, committed synchronously on this server
        after this result, flushes it anyway; None: the server's setting."""
        if not self.acks_share_database or request is None:
            return None
        if state not in states.READY_STATES:
            return "off"  # an intermediate state (STARTED, RETRY) may be lost in a crash
        return "off" if self._acked_after_run(request) else None

    def _acked_after_run(self, request: Any) -> bool:
        """Whether pgjobs' transport on this database acknowledges the message of
        ``request``'s task after the task ran."""
        if request is None or not self.acks_share_database:
            return False
        task = self.app.tasks.get(getattr(request, "task", None) or "")
        return task is not None and bool(task.acks_late)

    def _bytes(self, value: Any) -> bytes | None:
        return None if value is None else ensure_bytes(self.encode(value))

    # -- reading ----------------------------------------------------------------------------

    def metas(self, task_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The stored meta of each of ``task_ids`` that has a row."""
        rows = self.database.execute("task_meta", {"task_ids": list(task_ids)})
        return [self._meta(dict(zip(_ROW, row, strict=True))) for row in rows]

    def ready_metas(self, task_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The metas of those of ``task_ids`` in a ready state."""
        return [m for m in self.metas(task_ids) if m["status"] in states.READY_STATES]

    def _meta(self, row: dict[str, Any]) -> dict[str, Any]:
        meta = {key: row[key] for key in ("task_id", "status", "date_done", "traceback")}
        meta["result"] = self._decoded(row["result"])
        meta["children"] = self._decoded(row["children"])
        if self.app.conf.find_value_for_key("extended", "result"):
            meta.update({key: row[key] for key in _EXTENDED})
            meta.update(args=self._decoded(row["args"]), kwargs=self._decoded(row["kwargs"]))
        return self.meta_from_decoded(meta)

    def _decoded(self, payload: bytes | None) -> Any:
        return None if payload is None else self.decode(bytes(payload))

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        # In a worker's main process that lost a pool child, Celery asks whether the task
        # succeeded before: a result the child handed over answers, though not stored yet.
        held = handoff.held_row(task_id)
        if held is not None:
            return self._meta(held)
        found = self.metas([task_id])
        if found:
            return found[0]
        return {"task_id": task_id, "status": states.PENDING, "result": None,
                "traceback": None, "children": None, "date_done": None}

    def task_result_exists(self, task_id: str) -> bool:
        return bool(self.database.execute("task_exists", {"task_id": task_id})[0][0])

    def get_many(self, task_ids: Iterable[str], timeout: float | None = None,
                 interval: float = 0.5, no_ack: bool = True, on_message: Any = None,
                 on_interval: Any = None, max_iterations: int | None = None,
                 **kwargs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(task_id, meta)`` as tasks become ready, polling every ``interval``."""
        waiting = set(task_ids)
        started, rounds = time.monotonic(), 0
        while waiting:
            for meta in self.ready_metas(waiting):
                waiting.discard(meta["task_id"])
                if on_message is not None:
                    on_message(meta)
                yield meta["task_id"], meta
            rounds += 1
            if not waiting or (max_iterations and rounds >= max_iterations):
                return
            if timeout is not None and time.monotonic() - started >= timeout:
                raise TimeoutError(f"Operation timed out ({timeout})")
            if on_interval:
                on_interval()
            time.sleep(interval)

    # -- forgetting and clean-up -----------------------------------------------------------

    def _forget(self, task_id: str) -> None:
        self.database.execute("forget", {"task_id": task_id})

    def forget(self, task_id: str) -> None:
        super().forget(task_id)
        self.result_consumer.cancel_for(task_id)

    def cleanup(self) -> None:
        """Celery's ``backend_cleanup`` task: delete results older than ``result_expires``."""
        if not self.expires:
            return
        before = _utc_naive(datetime.now(UTC) - self.expires)
        self.database.execute("cleanup_tasks", {"before": before})
        self.database.execute("cleanup_groups", {"before": before})

    # -- groups ---------------------------------------------------------------------------------

    def _save_group(self, group_id: str, result: Any) -> Any:
        value = self._bytes(self.prepare_value(result))
        now = _utc_naive(datetime.now(UTC))
        self.database.execute("save_group", {"group_id": group_id, "result": value,
                                             "date_done": now})
        return result

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        rows = self.database.execute("restore_group", {"group_id": group_id})
        if not rows:
            return None
        taskset_id, payload, date_done = rows[0]
        value = self._decoded(payload)
        return {"taskset_id": taskset_id, "date_done": date_done,
                "result": None if value is None else result_from_tuple(value, self.app)}

    def _delete_group(self, group_id: str) -> None:
        self.database.execute("delete_group", {"group_id": group_id})

    # -- chords: joined by counting, no celery.chord_unlock ----------------------------------

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        self.ensure_chords_allowed()
        # A header holding groups is saved, so its callback gets nested results.
        if not isinstance(header_result_args[1], _regen):
            header = self.app.GroupResult(*header_result_args)
            if any(isinstance(part, GroupResult) for part in header.results):
                header.save(backend=self)

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        self.database.execute("chord_set_size", {"group_id": group_id, "size": chord_size})

    def add_to_chord(self, group_id: str, result: Any) -> None:
        self.database.execute("chord_add_part", {"group_id": group_id})
