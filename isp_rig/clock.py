"""The host clock the rig schedules and times triggers with, injectable for tests.

A :class:`Clock` gives monotonic nanoseconds and a sleep that does not wake
early.  The rig waits through it in 'scheduled' mode and times its collects with
it; :func:`isp_rig.devices.base.timed_call` stamps a trigger with it.  Tests hand
in a clock of their own (virtual time per thread) so that what the rig computes
from the times (delays, skew, offsets) is checked exactly, whatever the load.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Host monotonic time (ns) and a sleep on the same time base (seconds)."""

    def monotonic_ns(self) -> int:
        """Now, host monotonic nanoseconds."""

    def sleep(self, seconds: float) -> None:
        """Return no earlier than ``seconds`` from now."""


class SystemClock:
    """``time.monotonic_ns``; the sleep ends with a 1 ms-step spin, so it overshoots by
    well under a millisecond (``time.sleep`` alone may overshoot by the scheduler's
    tick)."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.001) if left < 0.002 else left - 0.001)


SYSTEM_CLOCK: Clock = SystemClock()
