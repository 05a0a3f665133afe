"""The operator commands' SQL, parsed once from ``queries.sql`` into named statements."""

from __future__ import annotations

from importlib.resources import files

from broker.queries import _parse

QUERIES: dict[str, str] = _parse(files("config.ops").joinpath("queries.sql").read_text("utf-8"))
