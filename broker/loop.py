"""The transport inside Celery's event loop (kombu's ``Hub``; ``implements.asynchronous``).

The loop reads two sockets of ours: the LISTEN connection (a notification means a queue has
work) and a wake-up pipe. The pipe is written when a prefetch window frees up while the loop
may be asleep: a task that ran inside the loop (solo pool) or finished on a pool thread
(threads pool) acks without any socket becoming readable, and without the pipe the next claim
would wait for the safety net. One timer of the loop's runs the transport's timed actions
(:mod:`broker.schedule`): it is armed for the next one, never on a fixed period.

Each loop turn checks the consumer's lease first, so a paused or cut-off worker stops handing
out its prefetched messages before anything else happens in that turn.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.transport import Transport


class LoopBinding:
    """Registers a transport's sockets, tick and poll with one event loop; undone by
    :meth:`unbind`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._loop: Any = None
        self._thread = 0
        self._watched_fd: int | None = None
        self._timer: Any = None
        self._timer_at = 0.0
        # A socket pair rather than a pipe: a closed socket object refuses further writes,
        # where a closed pipe's number may already belong to another file.
        self._pipe: tuple[socket.socket, socket.socket] | None = None
        self._woken = False

    @property
    def bound(self) -> bool:
        return self._loop is not None

    def on_loop_thread(self) -> bool:
        return self._loop is not None and threading.get_ident() == self._thread

    def bind(self, loop: Any) -> None:
        self._loop = loop
        self._thread = threading.get_ident()
        self._pipe = socket.socketpair()
        for end in self._pipe:
            end.setblocking(False)
        loop.add_reader(self._pipe[0].fileno(), self._on_wake)
        self.watch()
        loop.on_tick.add(self._on_tick)
        self.plan()

    def unbind(self) -> None:
        if self._loop is None:
            return
        self._forget_fd()
        self._loop.on_tick.discard(self._on_tick)
        self._disarm()
        self._close_pipe()
        self._loop = None

    def plan(self) -> None:
        """Arm the timer for the transport's next timed action, unless it is armed for that
        moment or an earlier one (it re-plans when it fires)."""
        at = self.transport.next_action_at()
        if self._loop is None or at is None:
            return
        if self._timer is not None and self._timer_at <= at:
            return
        self._disarm()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def wake(self) -> None:
        """Make the loop turn once more without waiting; callable from any thread."""
        pipe = self._pipe
        if pipe is None or self._woken:
            return
        self._woken = True
        try:
            pipe[1].send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (unbound meanwhile)

    # -- callbacks ----------------------------------------------------------------------------

    def _on_wake(self) -> None:
        pipe = self._pipe
        if pipe is not None:
            try:
                pipe[0].recv(4096)
            except OSError:
                pass
        self._woken = False
        self.transport.deliver_all()
        self.plan()

    def on_readable(self, fileno: int) -> None:
        self.transport.mark(self.transport.listener.drain())
        self.transport.deliver_all()
        self.plan()

    def _on_tick(self) -> None:
        transport = self.transport
        transport.check_lease()
        if transport.consumer is not None and transport.listener.ensure():
            transport.mark_all()  # notifications sent while it was down are lost
        self.watch()
        transport.deliver_all()
        self.plan()

    def _on_timer(self) -> None:
        self._timer = None
        self.transport.run_due()
        self.transport.deliver_all()
        self.plan()

    # -- the LISTEN socket ------------------------------------------------------------------

    def watch(self) -> None:
        """Keep the loop reading the LISTEN socket, which changes when it reconnects."""
        fd = self.transport.listener.fileno()
        if fd == self._watched_fd or self._loop is None:
            return
        self._forget_fd()
        if fd is not None:
            self._loop.add_reader(fd, self.on_readable, fd)
            self.transport.mark_all()
        self._watched_fd = fd

    def _forget_fd(self) -> None:
        if self._watched_fd is not None:
            try:
                self._loop.remove_reader(self._watched_fd)
            except (OSError, ValueError, KeyError):
                pass
            self._watched_fd = None

    def _close_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        try:
            self._loop.remove_reader(pipe[0].fileno())
        except (OSError, ValueError, KeyError):
            pass
        for end in pipe:
            end.close()
