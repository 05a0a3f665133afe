"""Records that a worker's pool children hand to its main process, to be written in the
transaction that acknowledges their messages.

A pool child that has run a message's task may have something to record about it (pgjobs'
result backend: the task's result). Writing it in a transaction of its own costs the child a
round trip and the server a commit for every task. Written in the transaction that deletes
the message instead, it costs neither, and the record and the acknowledgement commit or fail
together.

How the records travel:

- The worker's main process opens a pipe when Celery initialises the worker (the
  ``worker_init`` signal), before it forks its pool.
- A child writes each record as one line of JSON (:func:`hand`), tagged with the message's
  delivery tag, without blocking. A line longer than ``PIPE_BUF`` could mix with another
  child's, and a full pipe would make the child wait, so both are refused; the child then
  writes the record itself.
- The main process reads the pipe when it acknowledges, rejects or gives back a message
  (:func:`take`). The child wrote the line before it told its parent that the task was done,
  so the line is in the pipe by then.
- Every kind of record has a builder (:func:`register`) that turns a batch of records into
  one statement (:func:`statements`), which the transport runs before the acknowledgement.

Only a child forked by the process that opened the pipe hands records over: a child started
afresh (``spawn``), a grandchild and the main process itself write their own.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: A statement and its parameters, run in the transaction of an acknowledgement.
Statement = tuple[str, dict[str, Any]]
#: Turns the records of one kind, handed over for some messages, into one statement. Running
#: it again for records already written must do no harm: after an outage it may be.
Builder = Callable[[list[dict[str, Any]]], Statement]
#: Names a record's subject in a log line ("the result of task ...").
Describer = Callable[[dict[str, Any]], str]
#: A record as the main process holds it: its kind and its fields.
Record = tuple[str, dict[str, Any]]

PIPE_BUF = select.PIPE_BUF
# A bigger pipe lets the children run further ahead of a main process that is busy
# claiming; where the system refuses, the default (64 KiB) serves too.
PIPE_SIZE = 1 << 20

_BUILDERS: dict[str, Builder] = {}
_DESCRIBERS: dict[str, Describer] = {}
# The loop thread takes records while another thread may look at what is held.
_LOCK = threading.Lock()


@dataclass
class _Pipe:
    parent: int
    read: int
    write: int
    held: dict[int, list[Record]] = field(default_factory=dict)
    partial: bytes = b""


_pipe: _Pipe | None = None
# The kinds of record the parent had builders for when it forked this process: a kind
# registered in a child alone would reach a parent that cannot write it.
_inherited: frozenset[str] = frozenset()
# The process that forked this one: a grandchild re-parented to a main process that runs as
# PID 1 (in a container) must not pass for a pool child.
_forked_by: int | None = None


def register(kind: str, builder: Builder, describe: Describer | None = None) -> None:
    """Records of ``kind`` are written by the statement ``builder`` makes of them;
    ``describe`` names one in the log line saying it could not be written."""
    _BUILDERS[kind] = builder
    if describe is not None:
        _DESCRIBERS[kind] = describe


def open_pipe() -> None:
    """Let the pool children this process forks from now on hand records to it."""
    global _pipe
    if _pipe is not None and _pipe.parent == os.getpid():
        return
    read, write = os.pipe()  # not inherited by programs a child executes
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    try:
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (AttributeError, OSError):  # Linux only
        pass
    _pipe = _Pipe(os.getpid(), read, write)


def close_pipe() -> None:
    """Stop taking records (the records held are dropped)."""
    global _pipe
    pipe, _pipe = _pipe, None
    if pipe is not None and pipe.parent == os.getpid():
        os.close(pipe.read)
        os.close(pipe.write)


def in_pool_child() -> bool:
    """Whether this process may hand records to its parent."""
    pipe = _pipe
    return pipe is not None and pipe.parent == _forked_by == os.getppid()


def hand(delivery_tag: int, kind: str, record: dict[str, Any]) -> bool:
    """Hand ``record`` to the parent, to be written with the acknowledgement of the message
    ``delivery_tag``. False: not handed over (not a pool child, too long, the pipe is full);
    the caller writes it itself."""
    if not in_pool_child() or kind not in _inherited:
        return False
    pipe = _pipe
    assert pipe is not None
    try:
        line = json.dumps([delivery_tag, kind, record], ensure_ascii=False,
                          separators=(",", ":")).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: PostgreSQL would refuse it
        return False
    if len(line) > PIPE_BUF:
        return False
    try:
        return os.write(pipe.write, line) == len(line)  # all of it or nothing, under PIPE_BUF
    except OSError:
        return False


def take(delivery_tags: Iterable[int]) -> list[Record]:
    """The records handed over for ``delivery_tags``, which this process now settles; they
    are no longer held."""
    pipe = _pipe
    if pipe is None or pipe.parent != os.getpid():
        return []
    with _LOCK:
        _read(pipe)
        if not pipe.held:
            return []
        return [record for tag in delivery_tags for record in pipe.held.pop(tag, ())]


def held() -> list[Record]:
    """The records handed over to this process and not taken yet."""
    pipe = _pipe
    if pipe is None or pipe.parent != os.getpid():
        return []
    with _LOCK:
        _read(pipe)
        return [record for records in pipe.held.values() for record in records]


def statements(records: Iterable[Record]) -> list[Statement]:
    """One statement per kind, writing ``records``."""
    batches: dict[str, list[dict[str, Any]]] = {}
    for kind, fields in records:
        batches.setdefault(kind, []).append(fields)
    return [_BUILDERS[kind](batch) for kind, batch in batches.items()]


def describe(record: Record) -> str:
    """``record``'s subject, for a log line."""
    kind, fields = record
    describer = _DESCRIBERS.get(kind)
    return describer(fields) if describer is not None else f"a record of kind {kind!r}"


def _read(pipe: _Pipe) -> None:
    """File every complete line waiting in the pipe under its delivery tag."""
    while True:
        try:
            chunk = os.read(pipe.read, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            return
        *lines, pipe.partial = (pipe.partial + chunk).split(b"\n")
        for line in lines:
            tag, kind, fields = json.loads(line)
            pipe.held.setdefault(tag, []).append((kind, fields))


def _on_worker_init(**_: Any) -> None:
    open_pipe()


def _after_fork_in_child() -> None:
    global _LOCK, _inherited, _forked_by
    _LOCK = threading.Lock()  # another thread of the parent may have held it at the fork
    _inherited = frozenset(_BUILDERS)
    _forked_by = os.getppid()


os.register_at_fork(after_in_child=_after_fork_in_child)


try:  # Celery's worker, when there is one: the transport itself needs only kombu.
    from celery import signals
except ImportError:  # pragma: no cover - kombu without Celery
    pass
else:
    signals.worker_init.connect(_on_worker_init, weak=False)
