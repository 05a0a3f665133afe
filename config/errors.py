"""Errors shown to operators: one line each, with the advice that can fix them."""

from __future__ import annotations

import re

# PostgreSQL's SQLSTATE for a missing table: only then can `pgjobs migrate` help.
_UNDEFINED_TABLE = "42P01"
# libpq reports a refused connection without a SQLSTATE, so the advice goes by its text.
_CONNECTION_ADVICE = (
    (re.compile(r"certificate verify failed|root certificate file"),
     "check sslrootcert in DATABASE_URL: it must be the CA certificate that signed the server's"),
    (re.compile(r"does not match host name"),
     "use a host name in DATABASE_URL that the server's certificate gives"),
    # Before the pg_hba.conf advice below: the server refused a connection without TLS.
    (re.compile(r"pg_hba\.conf.*, no encryption"),
     "connect with TLS: add sslmode=verify-full and sslrootcert to DATABASE_URL"),
    (re.compile(r'database "[^"]*" does not exist'),
     "create that database (e.g. `createdb`) or fix the database name in DATABASE_URL"),
    (re.compile(r'role "[^"]*" does not exist|password authentication failed'
                r'|no password supplied|no pg_hba\.conf entry'),
     "check the user and password in DATABASE_URL"),
)
_REACH_ADVICE = "check that PostgreSQL is running and the host and port in DATABASE_URL are right"


def one_line(error: BaseException) -> str:
    """The first line of a driver or SQLAlchemy error (libpq's messages span several lines);
    for a SQLAlchemy error, of the driver error it wraps, without SQLAlchemy's link footer."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def advice(error: BaseException, setting: str = "DATABASE_URL") -> str | None:
    """What can fix a database ``error``: migrate for a missing table, the URL in ``setting``
    or the server for a failed connection; None for anything else."""
    driver_error = getattr(error, "orig", None) or error
    sqlstate = getattr(driver_error, "sqlstate", "not a driver error")
    if sqlstate == _UNDEFINED_TABLE:
        return "run `pgjobs migrate` to create the pgjobs tables"
    if sqlstate is not None:
        return None  # libpq leaves it unset only when the connection itself failed
    text = str(driver_error)
    for pattern, fix in _CONNECTION_ADVICE:
        if pattern.search(text):
            return fix.replace("DATABASE_URL", setting)
    return _REACH_ADVICE.replace("DATABASE_URL", setting)


def database_error(error: BaseException, setting: str = "DATABASE_URL") -> str:
    """``error`` in one line, followed by its advice (naming ``setting``) when there is one."""
    fix = advice(error, setting)
    return f"{one_line(error)}; {fix}" if fix else one_line(error)
