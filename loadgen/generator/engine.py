"""The open-loop executor: send each request at its due time, whatever the server is doing.

It decides how due times become requests. One dispatcher task walks the schedule (sleeping until
the next due time, then handing over every request that is due); each request goes to an idle
*slot* — a client with its own connection: a virtual user, or a plain connection for the
baseline benches — and when every slot is busy it waits in a backlog and is sent by the next slot
to come free. Latency is always measured from the due time, so time spent in the backlog counts
(no coordinated omission). It leaves what a request is to the `fire` function it is given.

The generator must never be the bottleneck silently, so the executor measures how late the
dispatcher wakes (`lag`: a late dispatcher means the generator's own loop is saturated) and
counts arrivals it could not send at all (`Recorder.shortfall`).
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

import trio

from loadgen.generator.histogram import Histogram
from loadgen.generator.recorder import Recorder

S = TypeVar("S")

# After this many dispatches without a sleep the dispatcher yields once, so a burst of
# overdue arrivals (after a GC pause, say) never starves the slots' tasks.
_YIELD_EVERY = 64


def freeze_heap() -> None:
    """Collect once, then park every object alive so far outside the cyclic collector.

    After setup the generator holds thousands of long-lived objects (connections, users,
    keys); a full collection walking them all is a pause of tens of milliseconds in which no
    request is sent. `gc.freeze()` (the CPython idiom for this) leaves later collections only
    the objects made during the run.
    """
    gc.collect()
    gc.freeze()


class SlotPool(Generic[S]):
    """Idle slots, a backlog of due times, and one task per busy slot."""

    def __init__(
        self,
        slots: Iterable[S],
        fire: Callable[[S, float], Awaitable[None]],
        recorder: Recorder,
        *,
        max_backlog: int = 100_000,
    ) -> None:
        self.idle: deque[S] = deque(slots)
        self.size = len(self.idle)
        self.fire = fire
        self.recorder = recorder
        # A backlog beyond this means the server is far behind; the excess is counted as
        # shortfall rather than held (memory is finite too).
        self.max_backlog = max_backlog
        self.backlog: deque[float] = deque()
        self.busy = 0
        self._nursery: trio.Nursery | None = None
        self._idle_event = trio.Event()

    def bind(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def submit(self, due: float) -> None:
        """Hand over one request due at `due` (never blocks)."""
        if self.idle:
            slot = self.idle.popleft()
            self.busy += 1
            assert self._nursery is not None, "bind() the pool to a nursery first"
            self._nursery.start_soon(self._run, slot, due)
        elif len(self.backlog) < self.max_backlog:
            self.backlog.append(due)
        else:
            self.recorder.short("backlog_full", due)

    async def _run(self, slot: S, due: float) -> None:
        try:
            while True:
                await self.fire(slot, due)
                if not self.backlog:
                    break
                due = self.backlog.popleft()
        finally:
            self.idle.append(slot)
            self.busy -= 1
            if self.busy == 0:
                self._idle_event.set()
                self._idle_event = trio.Event()

    async def wait_idle(self) -> None:
        """Return once no request is in flight or waiting."""
        while self.busy:
            await self._idle_event.wait()


class Dispatcher:
    """Walks a schedule of due times (seconds after `t0`, trio's clock) into a pool."""

    def __init__(self) -> None:
        self.lag = Histogram()  # µs between a due time and the dispatcher handing it over
        self.window_lag = Histogram()
        self.dispatched = 0
        self.done = False

    async def drive(
        self, due_times: Iterable[float], t0: float, submit: Callable[[float], None]
    ) -> None:
        since_yield = 0
        current_time = trio.current_time
        for rel in due_times:
            due = t0 + rel
            now = current_time()
            if due > now:
                await trio.sleep_until(due)
                now = current_time()
                since_yield = 0
            else:
                since_yield += 1
                if since_yield >= _YIELD_EVERY:
                    await trio.lowlevel.checkpoint()
                    since_yield = 0
            micros = int((now - due) * 1e6)
            self.lag.record(micros)
            self.window_lag.record(micros)
            submit(due)
            self.dispatched += 1
        self.done = True

    def take_window_lag(self) -> Histogram:
        w, self.window_lag = self.window_lag, Histogram()
        return w
