"""Bulk enqueue: many Celery task signatures written in a few statements and one transaction.

The one module of the broker that needs Celery; :mod:`broker` imports it on first use.

:func:`enqueue_many` builds each message with Celery's and kombu's own code, as
``apply_async`` would: Celery's router picks the queue, ``app.amqp.create_task_message`` (the
protocol 2 builder) makes the headers and body, ``app.amqp.send_task_message`` fills in the
exchange, routing key and delivery mode and fires the publish signals, and kombu's producer and
virtual channel make the envelope (serialisation, ``properties``, ``delivery_info``). Only the
last step differs: instead of one INSERT per message, the messages are kept and written at the
end by :meth:`broker.store.Store.publish_many`. So a bad signature anywhere in the batch writes
nothing.

``apply_async`` spends most of its time on work that is the same for every message of a batch
(reading the app's settings, acquiring a producer, re-declaring the queue). That work is done
once per call here; the per-message steps of ``Task.apply_async`` and ``Celery.send_task`` are
followed in :func:`_send_task`. A task class or app that overrides ``apply_async`` or
``send_task`` goes through its own method instead, with the same deferred write.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery, Task
from celery.canvas import Signature
from celery.utils import uuid
from celery.utils.functional import maybe_list
from celery.utils.saferepr import saferepr
from celery.utils.time import subtract_datetimes
from dateutil.parser import isoparse
from kombu import Producer, Queue

from broker.channel import Channel
from broker.store import Row, row


class _Collector(Producer):
    """A kombu producer that keeps the messages it would publish, and the entities it would
    declare, for one write at the end."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel, auto_declare=False)
        self.rows: list[Row] = []
        self.entities: dict[int, Any] = {}
        self.eta_lookahead = channel.connection.eta_lookahead

    def publish(self, body: Any, **kwargs: Any) -> None:
        # Nothing is sent here, so there is nothing to retry. The write at the end is one
        # transaction: when it fails, nothing was written, and the whole call can be retried.
        kwargs["retry"] = False
        return super().publish(body, **kwargs)

    def _publish(self, body: Any, priority: Any, content_type: Any, content_encoding: Any,
                 headers: Any, properties: dict[str, Any], routing_key: str, mandatory: Any,
                 immediate: Any, exchange: str, declare: list[Any], *args: Any,
                 **kwargs: Any) -> None:
        # kombu's Producer._publish and virtual Channel.basic_publish, up to the write.
        channel = self.channel
        message = channel.prepare_message(body, priority, content_type, content_encoding,
                                          headers, properties)
        for entity in declare:
            self.entities.setdefault(id(entity), entity)
        reply_to = properties.get("reply_to")
        if isinstance(reply_to, Queue):
            properties["reply_to"] = reply_to.name
        channel._inplace_augment_message(message, exchange, routing_key)
        # Kept encoded: a string per message instead of a tree of dicts spares the garbage
        # collector most of its work on a large batch.
        self.rows.append(row(exchange or "", routing_key or "", message, self.eta_lookahead))

    def write(self) -> int:
        """Declare each entity once, then write every message; copies inserted."""
        for entity in self.entities.values():
            self.maybe_declare(entity)
        return self.channel.store.publish_many(self.rows)


@dataclass
class _Call:
    """What is the same for every signature of one :func:`enqueue_many` call."""

    app: Any
    producer: _Collector
    options: dict[str, Any]
    parent: Any = None
    sent_event: bool = False
    inherit_priority: bool = False
    reply_to: str = ""
    # Known tasks by name, each with whether it sends in a way of its own.
    tasks: dict[str, tuple[Any, bool]] = field(default_factory=dict)
    # The argsrepr and kwargsrepr of no arguments, as Celery's message builder would make
    # them: most of a message's cost for a task called without arguments.
    empty_reprs: tuple[str, str] = ("()", "{}")

    @classmethod
    def of(cls, app: Any, producer: _Collector, options: dict[str, Any]) -> _Call:
        conf, amqp = app.conf, app.amqp
        levels = conf.task_repr_maxlevels
        empty_reprs = (saferepr((), amqp.argsrepr_maxsize, maxlevels=levels),
                       saferepr({}, amqp.kwargsrepr_maxsize, maxlevels=levels))
        return cls(app, producer, {k: v for k, v in options.items() if v is not None},
                   app.current_worker_task, conf.task_send_sent_event,
                   conf.task_inherit_parent_priority, app.thread_oid,
                   empty_reprs=empty_reprs)

    def reprs(self, args: tuple, kwargs: dict, options: dict[str, Any]) -> dict[str, str]:
        """The argsrepr and kwargsrepr known already for empty arguments, unless given."""
        known = {}
        if not args and "argsrepr" not in options:
            known["argsrepr"] = self.empty_reprs[0]
        if not kwargs and "kwargsrepr" not in options:
            known["kwargsrepr"] = self.empty_reprs[1]
        return known


def enqueue_many(signatures: Iterable[Any], **options: Any) -> list[Any]:
    """Send every task signature in ``signatures`` (``task.s(...)``, ``task.signature(...)``)
    as ``sig.apply_async(**options)`` would, in one transaction of a few statements; returns
    their ``AsyncResult`` in order. Inside :func:`broker.in_transaction` the messages go
    through the caller's transaction. Each queue that got a message is woken once.

    TypeError or ValueError, before anything is written, for an item that is not a task
    signature, a task the app does not know, arguments the task does not take, or signatures
    of several apps. The app's broker must be pgjobs' transport.
    """
    signatures = list(signatures)
    app = _app_of(signatures)
    if app is None:
        return []
    if app.conf.task_always_eager:
        return [sig.apply_async(**options) for sig in signatures]
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        if not isinstance(channel, Channel):
            raise TypeError("enqueue_many needs pgjobs' broker transport "
                            f"(broker.transport:Transport); this app's broker is "
                            f"{type(channel).__module__}")
        call = _Call.of(app, _Collector(channel), options)
        with _collector_paused():
            results = [_send(call, position, sig) for position, sig in enumerate(signatures)]
        with producer.connection._reraise_as_library_errors():  # as Celery's send_task
            call.producer.write()
    return results


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch is built: every message allocates
    dozens of containers, each full collection walks all the batch's live objects so far, and
    on 100,000 messages that took a fifth of the time. It runs again as before right after,
    and collects whatever cycles were made meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _app_of(signatures: list[Any]) -> Any:
    """The one Celery app of ``signatures`` (None if there are none); checks each item."""
    app = None
    for position, sig in enumerate(signatures):
        if not isinstance(sig, Signature) or type(sig).apply_async is not Signature.apply_async:
            raise TypeError(f"enqueue_many: item {position} is {_kind(sig)}, not a task "
                            "signature; pass task.s(...) or task.signature(...), and send "
                            "chains, groups and chords with their apply_async()")
        if app is None:
            app = sig.app
        elif sig.app is not app:
            raise ValueError(f"enqueue_many: item {position} belongs to another Celery app "
                             "than item 0; enqueue each app's signatures in a call of its own")
    return app


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}" if value is not None else "None"


def _send(call: _Call, position: int, sig: Any) -> Any:
    task, own_way = _task(call, position, sig.task)
    if call.options:
        args, kwargs, options = sig._merge((), {}, call.options)
    else:
        args, kwargs, options = sig.args, sig.kwargs, dict(sig.options)
    try:
        if own_way:
            return task.apply_async(args, kwargs, producer=call.producer, **options)
        return _apply_async(call, task, tuple(args), dict(kwargs), **options)
    except TypeError as error:
        raise TypeError(f"enqueue_many: item {position} ({task.name}): {error}") from None


def _task(call: _Call, position: int, name: Any) -> tuple[Any, bool]:
    known = call.tasks.get(name)
    if known is None:
        task = call.app.tasks.get(name) if isinstance(name, str) else None
        if task is None:
            raise ValueError(f"enqueue_many: item {position} names task {name!r}, which this "
                             "Celery app does not know; import the module defining it, or "
                             "check the name")
        known = call.tasks[name] = (task, _overridden(call.app, task))
    return known


def _overridden(app: Any, task: Any) -> bool:
    """Whether the task's class or the app's class sends in a way of its own."""
    return (type(task).apply_async is not Task.apply_async
            or type(app).send_task is not Celery.send_task)


def _apply_async(call: _Call, task: Any, args: tuple, kwargs: dict, task_id: Any = None,
                 producer: Any = None, link: Any = None, link_error: Any = None,
                 shadow: Any = None, **options: Any) -> Any:
    """``celery.app.task.Task.apply_async``, past its eager branch."""
    if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
        raise ValueError("soft_time_limit must be less than or equal to time_limit")
    check_arguments = getattr(task, "__header__", None) if task.typing else None
    if check_arguments is not None:
        check_arguments(*args, **kwargs)
    if task.__v2_compat__:
        shadow = shadow or task.shadow_name(task(), args, kwargs, options)
    else:
        shadow = shadow or task.shadow_name(args, kwargs, options)
    options = dict(task._get_exec_options(), **options)
    if task._dump_pydantic_arguments is not None and options.get("serializer") != "pickle":
        args, kwargs = task._dump_pydantic_arguments(args, kwargs)
    options.setdefault("ignore_result", task.ignore_result)
    return _send_task(call, task, args, kwargs, task_id=task_id, link=link,
                      link_error=link_error, shadow=shadow, **options)


def _send_task(call: _Call, task: Any, args: tuple, kwargs: dict, countdown: Any = None,
               eta: Any = None, task_id: Any = None, expires: Any = None,
               link: Any = None, link_error: Any = None, add_to_parent: bool = True,
               group_id: Any = None, group_index: Any = None, retries: int = 0,
               chord: Any = None, reply_to: Any = None, time_limit: Any = None,
               soft_time_limit: Any = None, root_id: Any = None, parent_id: Any = None,
               route_name: Any = None, shadow: Any = None, chain: Any = None,
               replaced_task_nesting: int = 0, **options: Any) -> Any:
    """``celery.app.base.Celery.send_task`` for a known task (``task_type`` given), with the
    app's settings read once per call, and the message kept by the collector."""
    app, amqp = call.app, call.app.amqp
    task_id = task_id or uuid()
    ignore_result = options.pop("ignore_result", None)
    options = amqp.router.route(options, route_name or task.name, args, kwargs, task)
    if expires is not None:
        options["expiration"] = _expiration(app, expires)
    parent = call.parent
    if parent and (not root_id or not parent_id):
        root_id = root_id or parent.request.root_id or parent.request.id
        parent_id = parent_id or parent.request.id
        if call.inherit_priority:
            options.setdefault("priority", parent.request.delivery_info.get("priority"))
    message = amqp.create_task_message(
        task_id, task.name, args, kwargs, countdown, eta, group_id, group_index, expires,
        retries, chord, maybe_list(link), maybe_list(link_error), reply_to or call.reply_to,
        time_limit, soft_time_limit, call.sent_event, root_id, parent_id, shadow, chain,
        ignore_result=ignore_result, replaced_task_nesting=replaced_task_nesting,
        **call.reprs(args, kwargs, options), **options)
    for stamp in options.pop("stamped_headers", []):
        options.pop(stamp)
    if not ignore_result:
        app.backend.on_task_call(call.producer, task_id)
    amqp.send_task_message(call.producer, task.name, message, **options)
    result = task.AsyncResult(task_id)
    result.ignored = ignore_result
    if add_to_parent and parent:
        parent.add_trail(result)
    return result


def _expiration(app: Any, expires: Any) -> float:
    """Seconds until ``expires`` (seconds, a datetime or ISO-8601 text), at least 0."""
    if isinstance(expires, datetime):
        seconds = subtract_datetimes(expires, app.now()).total_seconds()
    elif isinstance(expires, str):
        seconds = subtract_datetimes(isoparse(expires), app.now()).total_seconds()
    else:
        seconds = expires
    return max(seconds, 0)
