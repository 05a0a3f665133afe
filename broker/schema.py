"""The broker's DDL (``schema*.sql``), split into statements for a migration to run one by one."""

from __future__ import annotations

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


STEPS = ("schema.sql", "schema_subscriptions.sql", "schema_vacuum.sql")
"""The DDL files, in the order they apply (pgjobs runs them as migrations 0002, 0004, 0008)."""


def statements(step: str = "schema.sql") -> list[str]:
    """The statements of one DDL file of :data:`STEPS` without comments, in order."""
    text = files("broker").joinpath(step).read_text(encoding="utf-8")
    lines = [line.split("--", 1)[0].rstrip() for line in text.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
