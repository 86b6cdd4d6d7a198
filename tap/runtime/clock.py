"""One clock for the whole process (DESIGN rule 8).

Wall-clock milliseconds derived from `trio.current_time()` plus an offset fixed when the clock is
made. Under `trio.testing.MockClock` / `autojump_clock` every actor's notion of "now" moves with
the mock, so a 30 s hysteresis test runs in milliseconds. Core code never calls this: it is
handed `now_ms`.
"""

from __future__ import annotations

import time

import trio


class Clock:
    def __init__(self, epoch_ms: int | None = None) -> None:
        """Must be made inside `trio.run`. `epoch_ms` pins "now" (tests); default is wall time."""
        start = time.time() * 1000.0 if epoch_ms is None else float(epoch_ms)
        self._offset_ms = start - trio.current_time() * 1000.0

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000.0 + self._offset_ms)

    def deadline_for(self, at_ms: int) -> float:
        """The trio deadline (seconds on trio's clock) at which `now_ms()` reaches `at_ms`."""
        return (at_ms - self._offset_ms) / 1000.0

    async def sleep_until_ms(self, at_ms: int) -> None:
        await trio.sleep_until(self.deadline_for(at_ms))
