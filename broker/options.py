"""The transport options (``broker_transport_options``), validated once, with sane ranges.

Every option is a finite number within its range, or the transport refuses to start with one
line naming the option, the value and the range: a typo must not become a worker that floods
its log (a tiny timeout) or crashes on its first sleep (an infinite one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from broker.urls import direct_url

SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")

DAY = 86400.0


@dataclass(frozen=True)
class Range:
    """A closed range of finite numbers; ``integer`` ones must be whole. Also what pgjobs'
    own settings are checked with."""

    low: float
    high: float
    unit: str = ""
    integer: bool = False
    note: str = ""

    def check(self, value: object) -> float | int:
        """``value`` (a number or its text) as a number in range; ValueError saying
        "must be ..., got ..." otherwise."""
        number = _finite(value)
        if number is None or not self.low <= number <= self.high or (
                self.integer and not number.is_integer()):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        return int(number) if self.integer else number

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        unit = f" of {self.unit}" if self.unit else ""
        note = f" ({self.note})" if self.note else ""
        return f"{kind}{unit} from {self.low:g} to {self.high:g}{note}"


def _finite(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Spec:
    default: float | None
    range: Range


SPECS: dict[str, Spec] = {
    # Seconds after a consumer's last heartbeat before its messages return to their queue.
    "visibility_timeout": Spec(60.0, Range(1.0, DAY)),
    # Seconds between heartbeats; None: visibility_timeout / 4.
    "heartbeat_interval": Spec(None, Range(0.1, DAY / 2)),
    # Seconds between claims while the LISTEN connection is down.
    "polling_interval": Spec(1.0, Range(0.01, 3600.0)),
    # Seconds before its ETA that a delayed message becomes claimable.
    "eta_lookahead": Spec(2.0, Range(0.01, 3600.0)),
    # Most messages claimed at once by a consumer without a prefetch limit.
    "claim_batch_size": Spec(100, Range(1, 10000, integer=True)),
    # Seconds to wait for PostgreSQL when (re)connecting.
    "connect_timeout": Spec(5.0, Range(1.0, 300.0)),
    # Seconds of silence from the server after which a connection counts as dead (TCP
    # keepalives, tcp_user_timeout), and longest a claim may run.
    "fault_timeout": Spec(10.0, Range(2.0, 600.0)),
    # Deliveries without an ack before a message goes to the dead-letter table; None: no limit.
    "max_deliveries": Spec(None, Range(1, 1_000_000, integer=True)),
}


@dataclass(frozen=True)
class Options:
    visibility_timeout: float
    heartbeat_interval: float
    polling_interval: float
    eta_lookahead: float
    claim_batch_size: int
    connect_timeout: float
    fault_timeout: float
    max_deliveries: int | None
    synchronous_commit: str | None
    direct_url: str | None
    prepared_statements: bool


def parse(raw: dict[str, Any]) -> Options:
    """The options in ``raw`` with defaults filled in; ValueError names the bad one."""
    values = {name: _number(name, raw.get(name), spec) for name, spec in SPECS.items()}
    timeout = values["visibility_timeout"]
    if values["heartbeat_interval"] is None:
        # A quarter: three heartbeats may fail before the lease is in doubt, and an idle
        # worker sends four statements per visibility_timeout to keep it.
        values["heartbeat_interval"] = timeout / 4
    if values["heartbeat_interval"] * 2 > timeout:
        # A lease must survive a late or failed heartbeat, or live consumers are rescued and
        # their messages run twice.
        raise ValueError("broker transport option heartbeat_interval must be at most half of "
                         f"visibility_timeout, got {values['heartbeat_interval']:g} and "
                         f"{timeout:g}")
    return Options(**values, synchronous_commit=_synchronous_commit(raw),
                   direct_url=_direct_url(raw),
                   prepared_statements=flag(raw, "prepared_statements",
                                            "broker transport option"))


def _number(name: str, value: Any, spec: Spec) -> float | int | None:
    if value is None:
        return spec.default
    try:
        return spec.range.check(value)
    except ValueError as error:
        raise ValueError(f"broker transport option {name} {error}") from None


def _synchronous_commit(raw: dict[str, Any]) -> str | None:
    value = raw.get("synchronous_commit")
    if value is None:
        return None
    if str(value).lower() not in SYNCHRONOUS_COMMIT:
        raise ValueError("broker transport option synchronous_commit must be one of "
                         f"{', '.join(SYNCHRONOUS_COMMIT)}, got {value!r}")
    return str(value).lower()


def flag(raw: dict[str, Any], name: str, kind: str) -> bool:
    """The boolean option ``name`` of ``raw`` (False when absent or None); ValueError naming
    it otherwise. Only a bool: the string "false" must not turn an option on."""
    value = raw.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{kind} {name} must be true or false, got {value!r}")
    return value


def _direct_url(raw: dict[str, Any]) -> str | None:
    return direct_url(raw.get("direct_url"), "broker transport option direct_url")
