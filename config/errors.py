"""Errors shown to operators: one line each."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """The first line of a driver or SQLAlchemy error (libpq's messages span several lines);
    for a SQLAlchemy error, of the driver error it wraps, without SQLAlchemy's link footer."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
