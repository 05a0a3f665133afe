"""What a setting may hold: numeric ranges and the sender address, checked at start-up.

Each check raises ValueError with a message that completes "VARIABLE ...": the accepted
range or form, and the value given (none of these values is a secret).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from email.headerregistry import HeaderRegistry

from email_validator import EmailNotValidError, validate_email


@dataclass(frozen=True)
class Limit:
    """A closed range of finite numbers; ``integer`` ones must be whole."""

    low: float
    high: float
    unit: str
    integer: bool = False
    note: str = ""

    def check(self, value: object) -> float:
        """``value`` (a number or its text) as a number in range; ValueError otherwise."""
        number = self._number(value)
        if number is None or not math.isfinite(number) or not self.low <= number <= self.high \
                or (self.integer and not number.is_integer()):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        return int(number) if self.integer else number

    def describe(self) -> str:
        kind = "a whole number of" if self.integer else "a number of"
        note = f" ({self.note})" if self.note else ""
        return f"{kind} {self.unit} from {self.low:g} to {self.high:g}{note}"

    @staticmethod
    def _number(value: object) -> float | None:
        if isinstance(value, bool):
            return None
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None


# Retention below a quarter of an hour would delete results before clients read them; ten
# thousand years overflows date arithmetic long before it helps anyone.
_DAYS = Limit(0.01, 36500, "days")

LIMITS: dict[str, Limit] = {
    # Below 1 s the heartbeat (a quarter of it) floods the database and the log; above a
    # day, a dead worker's tasks wait longer than anyone would.
    "visibility_timeout": Limit(1, 86400, "seconds", note="1 day"),
    "result_retention_days": _DAYS,
    "sent_email_retention_days": _DAYS,
    "max_age_days": _DAYS,
    # Each batch is one transaction: huge ones hold locks and dead rows for long.
    "retention_batch_size": Limit(1, 100_000, "rows", integer=True),
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
