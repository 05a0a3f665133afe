"""Database URL helpers: one accepted form in, each library's dialect out, passwords masked."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def normalise_database_url(url: str) -> str:
    """Return ``url`` as ``postgresql://...``; ValueError naming what is wrong otherwise."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in _POSTGRES_SCHEMES:
        raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/db")
    try:
        parsed = make_url(url.replace(f"{scheme}://", "postgresql://", 1))
        parsed.port  # noqa: B018 - a non-numeric port raises here
    except (ArgumentError, ValueError):
        raise ValueError(f"is malformed: {redact_url(url)}") from None
    if not parsed.database:
        raise ValueError("names no database; expected postgresql://user:pass@host:port/db")
    return parsed.render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a ``postgresql://`` URL, on psycopg 3; a URL that already names
    its driver (``postgresql+psycopg://``) comes back unchanged."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in credentials else url
