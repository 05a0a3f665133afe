"""Tasks whose arguments are secrets (sign-in codes, tokens).

A task with ``private_args = True`` (use :class:`PrivateArgsTask` as its ``base``):

- has its arguments left out of ``celery_taskmeta`` even with ``result_extended``;
- is published with ``argsrepr``/``kwargsrepr`` that only count its arguments, and those
  are what Celery's worker log lines and task events (Flower) show.

Its return value is still stored: keep secrets out of it. Messages sent by name
(``send_task``) bypass the class; pass ``argsrepr``/``kwargsrepr`` yourself there. Celery
logs whole message bodies at DEBUG level, so run workers at INFO or above.
"""

from __future__ import annotations

from typing import Any

from celery import Task


def hidden_repr(values: Any) -> str:
    """What logs and events show instead of ``values``: how many there are."""
    count = len(values) if values else 0
    return f"<{count} private>"


class PrivateArgsTask(Task):
    """Base class of a task whose arguments must not be stored, logged or sent as events."""

    private_args = True

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.setdefault("argsrepr", hidden_repr(args))
        options.setdefault("kwargsrepr", hidden_repr(kwargs))
        return super().apply_async(args, kwargs, **options)


def stores_arguments(app: Any, request: Any) -> bool:
    """Whether the task of ``request`` may have its arguments stored with its result."""
    name = getattr(request, "task", None)
    task = app.tasks.get(name) if name else None
    return not getattr(task, "private_args", False)
