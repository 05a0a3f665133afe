"""What a setting may hold: numeric ranges and the sender address, checked at start-up.

Each check raises ValueError with a message that completes "VARIABLE ...": the accepted
range or form, and the value given (none of these values is a secret).
"""

from __future__ import annotations

from email.headerregistry import HeaderRegistry

from email_validator import EmailNotValidError, validate_email

from broker.options import Range

# Retention below a quarter of an hour would delete results before clients read them; ten
# thousand years overflows date arithmetic long before it helps anyone.
_DAYS = Range(0.01, 36500, "days")

LIMITS: dict[str, Range] = {
    # Below 1 s the heartbeat (a quarter of it) floods the database and the log; above a
    # day, a dead worker's tasks wait longer than anyone would.
    "visibility_timeout": Range(1, 86400, "seconds", note="1 day"),
    "result_retention_days": _DAYS,
    "sent_email_retention_days": _DAYS,
    "dead_letter_retention_days": _DAYS,
    "revoke_retention_days": _DAYS,
    "max_age_days": _DAYS,
    # Each batch is one transaction: huge ones hold locks and dead rows for long.
    "retention_batch_size": Range(1, 100_000, "rows", integer=True),
}

_HEADERS = HeaderRegistry()
_EXAMPLE = "e.g. 'Shop <no-reply@shop.example>'"


def check_mail_from(value: str) -> str:
    """``value`` if it is one address, with or without a display name; ValueError otherwise.

    A line break would let the value inject headers into every email, so it is refused
    outright; the address itself is checked as email_validator checks recipients.
    """
    if not value.isprintable():
        raise ValueError(f"must be one line without control characters, {_EXAMPLE}")
    header = _HEADERS("From", value)
    if header.defects or len(header.addresses) != 1:
        raise ValueError(f"must be one email address, {_EXAMPLE}; got {value!r}")
    _check_address(header.addresses[0].username, header.addresses[0].domain, value)
    return value


def _check_address(local: str, domain: str, value: str) -> None:
    # email_validator refuses the special-use name localhost, the development default; a
    # sender there is fine, so only its local part is checked.
    stand_in = "localhost.example" if domain.lower() == "localhost" else domain
    try:
        validate_email(f"{local}@{stand_in}", check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(f"has an invalid address in {value!r}: {str(error).rstrip('.')}; "
                         f"{_EXAMPLE}") from None
