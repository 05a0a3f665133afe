"""Database URL helpers: one accepted form in, each library's dialect out.

Passwords are masked by :func:`broker.urls.redact`, the one redactor of the project.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from broker.urls import redact

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

# Seconds a connection attempt may take before it fails (libpq's connect_timeout), for
# every connection pgjobs opens outside the broker, unless the URL names its own.
CONNECT_TIMEOUT_SECONDS = 5


def normalise_database_url(url: str) -> str:
    """``url`` with its scheme made ``postgresql://``, otherwise exactly as given (its
    percent-encoding included); ValueError naming what is wrong otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in POSTGRES_SCHEMES:
        raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/db")
    normalised = f"postgresql://{rest}"
    try:
        conninfo_to_dict(normalised)  # libpq's own parser: the one the broker uses
        parsed = make_url(normalised)
        parsed.port  # noqa: B018 - a non-numeric port raises here
    except (ArgumentError, ValueError, psycopg.Error):
        raise ValueError(
            f"is malformed: {redact(url)}; expected postgresql://user:pass@host:port/db, with "
            "special characters in user and password percent-encoded (a space is %20)") from None
    if not parsed.database:
        raise ValueError("names no database; expected postgresql://user:pass@host:port/db")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(f"names port {parsed.port}; a port is from 1 to 65535")
    return normalised


AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def check_amqp_url(url: str) -> None:
    """ValueError naming what is wrong unless ``url`` is ``amqp[s]://[user:pass@]host[:port][/vhost]``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"is malformed: {redact(url)}; expected "
                         "amqp://user:pass@host:5672/vhost") from None
    if not parts.hostname:
        raise ValueError("names no host; expected amqp://user:pass@host:5672/vhost")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"names port {port}; a port is from 1 to 65535")


def with_connect_timeout(url: str) -> str:
    """``url`` with ``connect_timeout`` set to :data:`CONNECT_TIMEOUT_SECONDS`, unless it
    sets one itself."""
    if "connect_timeout=" in url.partition("?")[2]:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}connect_timeout={CONNECT_TIMEOUT_SECONDS}"


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a ``postgresql://`` URL, on psycopg 3, with a connect timeout;
    a URL that already names its driver (``postgresql+psycopg://``) keeps it."""
    return with_connect_timeout(url.replace("postgresql://", "postgresql+psycopg://", 1))
