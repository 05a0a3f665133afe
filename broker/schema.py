"""The broker's DDL (``schema*.sql``), split into statements for a migration to run one by one."""

from __future__ import annotations

import re
from importlib.resources import files

TABLES = (
    "pgjobs_broker_dead_letter",
    "pgjobs_broker_binding",
    "pgjobs_broker_exchange",
    "pgjobs_broker_queue",
    "pgjobs_broker_message",
    "pgjobs_broker_consumer",
)
"""The tables of ``schema.sql``, in an order safe to drop."""


STEPS = ("schema.sql", "schema_subscriptions.sql", "schema_vacuum.sql", "schema_wakeups.sql",
         "schema_wake_one.sql")
"""The DDL files, in the order they apply (pgjobs runs them as migrations 0002, 0004, 0008,
0010, 0011)."""

# A function body between $$ and $$ holds semicolons of its own.
_BODY = re.compile(r"(\$\$.*?\$\$)", re.DOTALL)


def statements(step: str = "schema.sql") -> list[str]:
    """The statements of one DDL file of :data:`STEPS` without comments, in order. A function
    body is quoted with ``$$`` (no other dollar quote), and no ``--`` appears inside a string."""
    text = files("broker").joinpath(step).read_text(encoding="utf-8")
    lines = [line.split("--", 1)[0].rstrip() for line in text.splitlines()]
    found, current = [], ""
    for index, part in enumerate(_BODY.split("\n".join(lines))):
        if index % 2:  # a function body: kept whole
            current += part
            continue
        pieces = part.split(";")
        current += pieces[0]
        for piece in pieces[1:]:
            found.append(current)
            current = piece
    found.append(current)
    return [statement.strip() for statement in found if statement.strip()]
