"""Exceptions the tasks raise on purpose. Messages are one line and never hold a password."""

from __future__ import annotations


class EmailError(Exception):
    """Base of every email failure raised by :mod:`tasks`."""


class PermanentEmailError(EmailError):
    """The email can never be sent as asked (5xx reply, bad address, TLS refused): no retry."""


class InvalidAddressError(PermanentEmailError):
    """The recipient address is not a valid email address; checked before any network I/O."""


class TransientEmailError(EmailError):
    """The SMTP server was unreachable or answered 4xx: the task retries with backoff."""


class EmailInProgressError(TransientEmailError):
    """Another delivery of the same task id holds the lease: retried once the lease lapsed."""


class RetentionConfigError(Exception):
    """A retention rule names a table or column that cannot be cleaned: fix RETENTION_TABLES."""
