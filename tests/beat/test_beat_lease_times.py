"""Unit: the leader lease's times keep the takeover promise, or are refused."""

from __future__ import annotations

import pytest

from beat.leadership import TAKEOVER_PROMISE, LeaseTimes


@pytest.mark.parametrize("times", [
    {"lease": 6, "renew_every": 3},       # renewals too sparse for the lease
    {"lease": 9, "renew_every": 1},       # takeover could exceed the promise
    {"lease": 6, "standby_retry": 0},     # a standby that never waits
])
def test_lease_times_that_break_the_takeover_promise_are_refused(times: dict) -> None:
    with pytest.raises(ValueError, match="beat"):
        LeaseTimes(**times)


def test_the_default_lease_times_keep_the_readme_promise() -> None:
    # The README promises a takeover within 10 s; the module's promise must not drift from it
    times = LeaseTimes()
    assert TAKEOVER_PROMISE == 10.0
    assert times.renew_every <= times.lease / 3
    assert times.lease + times.standby_retry + times.depose_wait <= TAKEOVER_PROMISE
