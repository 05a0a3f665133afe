"""The broker's DDL (``schema.sql``), split into statements for a migration to run one by one."""

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
"""Every broker table, in an order safe to drop."""


def statements() -> list[str]:
    """The statements of ``schema.sql`` without comments, in order."""
    text = files("broker").joinpath("schema.sql").read_text(encoding="utf-8")
    lines = [line.split("--", 1)[0].rstrip() for line in text.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
