"""The breaker actor: runs one market's `tap.breaker.Breaker` on live ticks, time and overrides.

It decides nothing itself: the rules live in `tap.breaker`. It feeds the machine every tick of
its symbol and every operator override, wakes exactly at the machine's next deadline, publishes
each `BreakerChanged` to every subscriber in order, and keeps the `tap_breaker_open` gauge. The
edge reads the current state synchronously through the `BreakerHandle` given to
`task_status.started`, so admission never waits on this actor.

Waking without polling: a timer task sleeps in a cancel scope whose deadline is the machine's
`next_deadline_ms()`. Every call into the machine moves that deadline (a tick pushes the stale
deadline out; an override removes it), so the timer wakes only when time alone changes the
answer, and never at all while the feed is stale or an override holds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import trio

from tap.breaker import Breaker
from tap.config import BreakerConfig
from tap.messages import BreakerChanged, BreakerMode, BreakerStateName, Tick
from tap.runtime.clock import Clock
from tap.runtime.metrics import BREAKER_OPEN

log = logging.getLogger(__name__)


class BreakerHandle:
    """Read-only view for the edge and health checks: the state as of the last input."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state(self) -> BreakerStateName:
        return self._breaker.state

    def reason(self) -> str:
        return self._breaker.reason

    def mode(self) -> BreakerMode:
        return self._breaker.mode


async def run(
    cfg: BreakerConfig,
    clock: Clock,
    ticks: trio.MemoryReceiveChannel[Tick],
    states: Sequence[trio.MemorySendChannel[BreakerChanged]],
    overrides: trio.MemoryReceiveChannel[BreakerMode],
    *,
    symbol: str,
    judge_tick_age: bool = True,
    task_status: trio.TaskStatus[BreakerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `symbol`'s breaker until `ticks` ends (ticks of other symbols are skipped).

    Publishing awaits each subscriber's `send`: changes are rare (at most one per tick) and a
    subscriber must not miss one, so a full subscriber channel delays the next publication rather
    than dropping it. The state the handle shows is updated *before* publishing, so admission is
    never behind a slow subscriber. The first publication is the startup state (open, "startup").
    The caller owns the channels; this actor does not close them. `overrides` ending only stops
    overrides; a mode that is not open/closed/auto is logged and ignored. `judge_tick_age=False`
    for the in-process simulator only (`tap.breaker.Breaker`: its ticks cannot trail a market).

    A tick's age is `now − ts` with `now` read when this actor takes the tick: if the breaker's
    own queue is behind, ticks look late and the breaker opens — rightly, our prices are behind.
    """
    breaker = Breaker(cfg, symbol, judge_tick_age=judge_tick_age)
    gauge = BREAKER_OPEN.labels(symbol=symbol)
    publish_order = trio.Lock()  # FIFO: subscribers see changes in the order the machine made them
    sleeping: trio.CancelScope | None = None  # the timer task's current sleep, once it sleeps

    def wake_deadline() -> float:
        due = breaker.next_deadline_ms()
        return math.inf if due is None else clock.deadline_for(due)

    async def publish(changes: list[BreakerChanged]) -> None:
        # Synchronous part first, before any checkpoint: gauge and timer follow the machine.
        gauge.set(1 if breaker.state == "open" else 0)
        if sleeping is not None:
            sleeping.deadline = wake_deadline()
        if not changes:
            return
        async with publish_order:
            for change in changes:
                for subscriber in states:
                    await subscriber.send(change)

    async def wake_at_deadlines() -> None:
        nonlocal sleeping
        while True:
            with trio.CancelScope(deadline=wake_deadline()) as sleeping:
                await trio.sleep_forever()
            # The deadline passed. trio's float clock may put now_ms a hair before it; the
            # deadline itself is the truthful "now" for the machine.
            due = breaker.next_deadline_ms()
            now = clock.now_ms() if due is None else max(clock.now_ms(), due)
            await publish(breaker.on_time(now))

    async def follow_overrides() -> None:
        async for mode in overrides:
            try:
                changes = breaker.override(mode, clock.now_ms())
            except ValueError:
                log.warning("breaker override %r ignored: not open/closed/auto", mode)
                continue
            log.info("breaker override %s for %s: now %s", mode, symbol, breaker.state)
            await publish(changes)

    task_status.started(BreakerHandle(breaker))
    startup = BreakerChanged(
        state=breaker.state, reason=breaker.reason, at=clock.now_ms(), symbol=symbol
    )
    await publish([startup])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wake_at_deadlines)
        nursery.start_soon(follow_overrides)
        async for tick in ticks:
            if tick.symbol == symbol:
                await publish(breaker.on_tick(tick.ts, tick.price, clock.now_ms()))
        nursery.cancel_scope.cancel()
