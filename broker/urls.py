"""Passwords out of connection strings: the one redactor for everything pgjobs prints.

libpq takes a password in three places, and :func:`redact` masks all three:

- the user part of a URL: ``postgresql://user:secret@host/db`` (percent-encoded or not);
- a URL parameter: ``...?password=secret`` or ``...&sslpassword=secret``;
- a key=value connection string: ``host=h password=secret`` or ``password='a secret'``.

It never parses strictly, so a malformed URL (the very one an error message is about) is
masked too. Where the end of the user part is ambiguous (a raw ``@``, ``/`` or ``?`` in a
password), it masks too much rather than too little.

A password that must not sit in a URL Celery shows (a ``direct_url`` option) is kept apart
with :func:`remember_password`, and put back by the connection that needs it
(:func:`with_remembered_password`).
"""

from __future__ import annotations

import re
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# ?password=... and &sslpassword=... in a URL; the value ends at the next parameter.
_QUERY_PASSWORD = re.compile(r"(?<=[?&])((?:ssl)?password)=[^&#]*", re.IGNORECASE)
# password=... in a key=value string; the value is one word or a quoted string.
_KEYWORD_PASSWORD = re.compile(
    r"(?<![^\s])((?:ssl)?password)\s*=\s*(?:'(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)


def redact(url: str, mask: str = "**") -> str:
    """``url`` (a libpq URL or key=value string) with every password replaced by ``mask``."""
    masked = _QUERY_PASSWORD.sub(lambda found: f"{found[1]}={mask}", url)
    masked = _KEYWORD_PASSWORD.sub(lambda found: f"{found[1]}={mask}", masked)
    return _mask_user_part(masked, mask)


def _mask_user_part(url: str, mask: str) -> str:
    """Mask what lies between the user name's ``:`` and the last ``@``: hosts, ports and
    database names never hold an ``@``, so the password cannot reach past it."""
    span = _user_password(url)
    if span is None:
        return url
    start, end = span
    return f"{url[:start]}{mask}{url[end:]}"


def _user_password(url: str) -> tuple[int, int] | None:
    """Where the password of the user part lies in ``url``, or None when it names none."""
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    at = url.rfind("@", start)
    if at < 0:
        return None
    user, colon, password = url[start:at].partition(":")
    if not colon or not password:
        return None
    return start + len(user) + 1, at


# password=... as a URL parameter, with the separator that joins it to the next one.
_QUERY_PASSWORD_PARAMETER = re.compile(r"(?<=[?&])password=[^&#]*&?", re.IGNORECASE)


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (decoded), or None when it names none.

    Celery and kombu print a broker URL in places that do not mask it (``inspect stats``
    shows it whole), but never a password given apart (kombu's ``password``, Celery's
    ``broker_password``). A URL whose password cannot be taken out is given back whole."""
    password = _libpq_password(url)
    if password is None:
        return url, None
    span = _user_password(url)
    stripped = url if span is None else f"{url[:span[0] - 1]}{url[span[1]:]}"
    stripped, removed = _QUERY_PASSWORD_PARAMETER.subn("", stripped)
    stripped = stripped.rstrip("?&") if removed else stripped
    if _libpq_password(stripped) is not None or stripped == url:
        return url, None
    return stripped, password


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` as a URL parameter (it wins over one in the user part)."""
    if password is None:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}password={quote(password, safe='')}"


# Passwords given apart from their URLs, by the identity of what they open (see
# remember_password). Per process: the worker's pool children inherit it by fork.
_PASSWORDS: dict[tuple[str | None, ...], str] = {}
# What a .pgpass line matches on: the same server, database and role take the same password.
_IDENTITY = ("host", "hostaddr", "port", "dbname", "user")


def remember_password(url: str, password: str | None) -> None:
    """Keep ``password`` for the connections this process opens to ``url`` (a URL without
    it), for a URL that must sit where Celery shows it whole: ``inspect stats`` prints the
    transport options as they are, and ``inspect conf`` masks no ``direct_url``. Connections
    whose URL names no password take it from here (:func:`password_for`)."""
    key = _identity(url)
    if password is not None and key is not None:
        _PASSWORDS[key] = password


def password_for(url: str) -> str | None:
    """The password remembered for ``url``'s server, port, database and user, if any."""
    key = _identity(url)
    return None if key is None else _PASSWORDS.get(key)


def with_remembered_password(url: str) -> str:
    """``url`` with the password remembered for it, when it names none itself."""
    password = password_for(url)
    if password is None or _libpq_password(url) is not None:
        return url
    if "://" not in url:  # a key=value string
        return make_conninfo(url, password=password)
    return with_password(url, password)


def _identity(url: str) -> tuple[str | None, ...] | None:
    try:
        parameters = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return None
    return tuple(parameters.get(name) for name in _IDENTITY)


def _libpq_password(url: str) -> str | None:
    """The password libpq reads from ``url``; None when there is none or it cannot parse it."""
    try:
        return conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return None


def direct_url(value: object, setting: str) -> str | None:
    """A ``direct_url`` option (a libpq URL or key=value string) ready to connect with, or
    None when unset; ValueError naming ``setting`` when libpq cannot parse it. Celery shows
    the option whole, so a password kept apart for it is put back here
    (:func:`with_remembered_password`)."""
    if value in (None, ""):
        return None
    try:
        conninfo_to_dict(str(value))
    except psycopg.ProgrammingError:
        raise ValueError(f"{setting} is not a PostgreSQL URL: {redact(str(value))}; expected "
                         "postgresql://user:pass@host:5432/db") from None
    return with_remembered_password(str(value))
