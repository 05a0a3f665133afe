"""The broker's SQL, parsed once from ``queries.sql`` into named statements."""

from __future__ import annotations

import re
from importlib.resources import files

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _parse(text: str) -> dict[str, str]:
    """Split ``-- name: x`` blocks; comment lines inside a block are dropped."""
    parts = _NAME.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def load(package: str, filename: str) -> dict[str, str]:
    """The named statements of ``filename``, a resource of ``package``."""
    return _parse(files(package).joinpath(filename).read_text("utf-8"))


QUERIES: dict[str, str] = load("broker", "queries.sql")


def query(name: str) -> str:
    """The named statement (``%(param)s`` placeholders: psycopg 3 and any DB-API driver)."""
    return QUERIES[name]


def composed(name: str, **identifiers: str) -> sql.Composed:
    """The named statement with its ``{identifier}`` slots filled safely."""
    template = sql.SQL(QUERIES[name])  # type: ignore[arg-type]
    return template.format(**{key: sql.Identifier(value) for key, value in identifiers.items()})
