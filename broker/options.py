"""The transport options (``broker_transport_options``), validated once, with sane ranges.

Every option is a finite number within its range, or the transport refuses to start with one
line naming the option, the value and the range: a typo must not become a worker that floods
its log (a tiny timeout) or crashes on its first sleep (an infinite one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")

DAY = 86400.0


@dataclass(frozen=True)
class Spec:
    default: float | None
    low: float
    high: float
    integer: bool = False


SPECS: dict[str, Spec] = {
    # Seconds after a consumer's last heartbeat before its messages return to their queue.
    "visibility_timeout": Spec(60.0, 1.0, DAY),
    # Seconds between heartbeats; None: min(5, visibility_timeout / 4).
    "heartbeat_interval": Spec(None, 0.1, DAY / 2),
    # Seconds between safety-net claims when no notification arrives.
    "polling_interval": Spec(1.0, 0.01, 3600.0),
    # Seconds before its ETA that a delayed message becomes claimable.
    "eta_lookahead": Spec(2.0, 0.01, 3600.0),
    # Most messages claimed at once by a consumer without a prefetch limit.
    "claim_batch_size": Spec(100, 1, 10000, integer=True),
    # Seconds to wait for PostgreSQL when (re)connecting.
    "connect_timeout": Spec(5.0, 1.0, 300.0),
    # Seconds of silence from the server after which a connection counts as dead (TCP
    # keepalives, tcp_user_timeout), and longest a claim may run.
    "fault_timeout": Spec(10.0, 2.0, 600.0),
    # Deliveries without an ack before a message goes to the dead-letter table; None: no limit.
    "max_deliveries": Spec(None, 1, 1_000_000, integer=True),
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


def parse(raw: dict[str, Any]) -> Options:
    """The options in ``raw`` with defaults filled in; ValueError names the bad one."""
    values = {name: _number(name, raw.get(name), spec) for name, spec in SPECS.items()}
    timeout = values["visibility_timeout"]
    if values["heartbeat_interval"] is None:
        values["heartbeat_interval"] = min(5.0, timeout / 4)
    if values["heartbeat_interval"] * 2 > timeout:
        # A lease must survive a late or failed heartbeat, or live consumers are rescued and
        # their messages run twice.
        raise ValueError("broker transport option heartbeat_interval must be at most half of "
                         f"visibility_timeout, got {values['heartbeat_interval']:g} and "
                         f"{timeout:g}")
    return Options(**values, synchronous_commit=_synchronous_commit(raw))


def _number(name: str, value: Any, spec: Spec) -> float | int | None:
    if value is None:
        return spec.default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not (
            spec.low <= number <= spec.high) or (spec.integer and not number.is_integer()):
        kind = "a whole number" if spec.integer else "a number"
        raise ValueError(f"broker transport option {name} must be {kind} from {spec.low:g} to "
                         f"{spec.high:g}, got {value!r}")
    return int(number) if spec.integer else number


def _synchronous_commit(raw: dict[str, Any]) -> str | None:
    value = raw.get("synchronous_commit")
    if value is None:
        return None
    if str(value).lower() not in SYNCHRONOUS_COMMIT:
        raise ValueError("broker transport option synchronous_commit must be one of "
                         f"{', '.join(SYNCHRONOUS_COMMIT)}, got {value!r}")
    return str(value).lower()
