"""The circuit breaker: its rules (`tap.breaker`) and its actor (`actors.breaker`), mock time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.testing

from actors import breaker as breaker_actor
from tap.breaker import Breaker
from tap.config import BreakerConfig
from tap.messages import BreakerChanged, BreakerMode, Tick
from tap.runtime.clock import Clock
from tap.runtime.metrics import BREAKER_OPEN

CFG = BreakerConfig()  # stale 10 s, hysteresis 30 s, jump 500 bps within 1 s
SYMBOL = "BTC-USD"
T0 = 1_700_000_000_000
PRICE = 10_000_000


def fed(breaker: Breaker, start: int, seconds: int, price: int = PRICE) -> int:
    """Feed one tick per second for `seconds` seconds from `start`; returns the last tick's time."""
    for i in range(seconds + 1):
        breaker.on_tick(start + i * 1000, price, start + i * 1000)
    return start + seconds * 1000


# ── the rules ─────────────────────────────────────────────────────────────────────────────────


def test_starts_open_and_closes_after_30_s_of_fresh_ticks() -> None:
    b = Breaker(CFG)
    assert (b.state, b.reason) == ("open", "startup")
    assert b.on_tick(T0, PRICE, T0) == []
    assert b.next_deadline_ms() == T0 + 10_000  # the stale deadline comes first
    fed(b, T0, 29)
    assert b.state == "open"
    assert b.next_deadline_ms() == T0 + 30_000
    assert b.on_time(T0 + 29_999) == []
    assert b.on_time(T0 + 30_000) == [
        BreakerChanged(state="closed", reason="recovered", at=T0 + 30_000)
    ]


def test_opens_exactly_stale_after_ms_after_the_last_tick_arrived() -> None:
    b = Breaker(CFG)
    last = fed(b, T0, 40)
    assert b.state == "closed"
    assert b.next_deadline_ms() == last + 10_000
    assert b.on_time(last + 9_999) == []
    [opened] = b.on_time(last + 10_000)
    assert opened == BreakerChanged(state="open", reason="stale_feed", at=last + 10_000)
    assert b.next_deadline_ms() is None  # nothing but a tick can change it now


def test_a_late_on_time_stamps_changes_when_the_rules_made_them() -> None:
    b = Breaker(CFG)
    last = fed(b, T0, 29)
    changes = b.on_time(last + 60_000)
    assert changes == [
        BreakerChanged(state="closed", reason="recovered", at=T0 + 30_000),
        BreakerChanged(state="open", reason="stale_feed", at=last + 10_000),
    ]


def test_any_silence_of_stale_after_ms_restarts_the_hysteresis() -> None:
    b = Breaker(CFG)
    last = fed(b, T0, 20)
    resumed = last + 10_000  # exactly stale_after_ms later: the run is broken
    fed(b, resumed, 29)
    assert (b.state, b.reason) == ("open", "stale_feed")
    b.on_tick(resumed + 30_000, PRICE, resumed + 30_000)
    assert (b.state, b.reason) == ("closed", "recovered")


def test_silence_just_under_stale_after_ms_keeps_the_run() -> None:
    b = Breaker(CFG)
    b.on_tick(T0, PRICE, T0)
    t = T0
    while t < T0 + 30_000:
        t += 9_999
        b.on_tick(t, PRICE, t)
    assert b.state == "closed"


def test_jump_opens_and_restarts_the_hysteresis() -> None:
    b = Breaker(CFG)
    last = fed(b, T0, 35)
    assert b.state == "closed"
    jump_at = last + 500
    [opened] = b.on_tick(jump_at, PRICE * 10_501 // 10_000, jump_at)
    assert opened == BreakerChanged(state="open", reason="jump", at=jump_at)
    t = jump_at
    while t < jump_at + 29_000:
        t += 1000
        assert b.on_tick(t, PRICE * 10_501 // 10_000, t) == []
    assert b.next_deadline_ms() == jump_at + 30_000
    assert b.on_time(jump_at + 30_000)[0].state == "closed"


@pytest.mark.parametrize(
    ("earlier", "later", "jump"),
    [
        (10_000_000, 10_500_000, False),  # exactly 500 bps up: not more than
        (10_000_000, 10_500_001, True),
        (10_000_000, 9_500_000, False),  # exactly 500 bps of the earlier price, down
        (10_000_000, 9_499_999, True),
        (10_500_000, 10_000_000, False),  # 476 bps of the earlier price: not a jump
    ],
)
def test_jump_threshold_is_more_than_jump_bps_of_the_earlier_price(
    earlier: int, later: int, jump: bool
) -> None:
    b = Breaker(CFG)
    b.on_tick(T0, earlier, T0)
    b.on_tick(T0 + 1_000, later, T0 + 1_000)  # exactly jump_window_ms later: still inside
    assert (b.reason == "jump") is jump


def test_moves_spread_over_more_than_the_window_are_not_jumps() -> None:
    b = Breaker(CFG)
    b.on_tick(T0, PRICE, T0)
    b.on_tick(T0 + 1_001, PRICE * 2, T0 + 1_001)
    assert b.reason == "startup"


def test_ticks_older_than_the_newest_are_ignored_even_as_liveness() -> None:
    b = Breaker(CFG)
    b.on_tick(T0, PRICE, T0)
    b.on_tick(T0 - 1, PRICE * 2, T0 + 9_000)  # old and wild: ignored
    assert b.reason == "startup"
    assert b.on_time(T0 + 10_000)[0].reason == "stale_feed"


def test_zero_hysteresis_closes_on_the_first_fresh_tick() -> None:
    b = Breaker(BreakerConfig(hysteresis_ms=0))
    assert b.on_tick(T0, PRICE, T0) == [BreakerChanged(state="closed", reason="recovered", at=T0)]


def test_a_feed_that_flows_but_trails_the_exchange_opens_it_until_30_s_of_timely_ticks() -> None:
    """Issue 9, defect 10: ticks keep arriving (never stale) but seconds after their exchange
    time. The old breaker looked only at arrivals and stayed closed: bets with hindsight."""
    b = Breaker(CFG)
    last = fed(b, T0, 40)
    assert b.state == "closed"
    assert b.on_tick(last + 1_000, PRICE, last + 2_000) == []  # exactly max_tick_age_ms: timely
    t = last + 2_000
    [opened] = b.on_tick(t, PRICE, t + 1_001)  # 1001 ms old on arrival
    assert opened == BreakerChanged(state="open", reason="late_feed", at=t + 1_001)
    for _ in range(60):  # a minute of ticks, each 3 s behind: never stale, always late
        t += 1_000
        assert b.on_tick(t, PRICE, t + 3_000) == []
    assert (b.state, b.reason) == ("open", "late_feed")
    caught_up = t + 3_000  # the feed catches up: the hysteresis counts from the last late tick
    t = caught_up
    while t < caught_up + 29_000:
        t += 1_000
        assert b.on_tick(t, PRICE, t) == []
    assert b.next_deadline_ms() == caught_up + 30_000
    assert b.on_time(caught_up + 30_000) == [
        BreakerChanged(state="closed", reason="recovered", at=caught_up + 30_000)
    ]


def test_late_ticks_keep_the_feed_alive_and_a_late_jump_reads_as_a_jump() -> None:
    b = Breaker(CFG)
    b.on_tick(T0, PRICE, T0 + 5_000)
    assert (b.state, b.reason) == ("open", "late_feed")
    b.on_tick(T0 + 9_000, PRICE * 2, T0 + 14_000)  # within stale_after_ms of the last arrival
    assert b.reason == "late_feed"  # a second apart in exchange time: not a jump window
    b.on_tick(T0 + 9_500, PRICE, T0 + 14_500)
    assert b.reason == "jump"


@pytest.mark.parametrize(
    "breaker",
    [
        Breaker(BreakerConfig(max_tick_age_ms=0)),
        Breaker(CFG, judge_tick_age=False),  # the in-process simulator's schedule
    ],
    ids=["max_tick_age_ms=0", "judge_tick_age=False"],
)
def test_tick_age_not_judged_when_turned_off(breaker: Breaker) -> None:
    for i in range(31):
        breaker.on_tick(T0 + i * 1_000, PRICE, T0 + i * 1_000 + 4_700)
    assert (breaker.state, breaker.reason) == ("closed", "recovered")


def test_override_holds_and_auto_returns_to_what_the_ticks_imply() -> None:
    b = Breaker(CFG)
    assert b.override("closed", T0) == [BreakerChanged(state="closed", reason="override", at=T0)]
    assert b.next_deadline_ms() is None
    fed(b, T0, 40)  # the rules close underneath: nothing published
    assert (b.state, b.reason, b.auto_state) == ("closed", "override", "closed")
    assert b.override("open", T0 + 40_000)[0].state == "open"
    assert b.on_time(T0 + 90_000) == []  # stale underneath, still held open
    assert b.override("auto", T0 + 90_000) == [
        BreakerChanged(state="open", reason="stale_feed", at=T0 + 90_000)
    ]
    with pytest.raises(ValueError, match="breaker mode"):
        b.override("half", T0 + 90_000)  # type: ignore[arg-type]


# ── the actor ─────────────────────────────────────────────────────────────────────────────────


@dataclass
class Rig:
    clock: Clock
    ticks: trio.MemorySendChannel[Tick]
    overrides: trio.MemorySendChannel[BreakerMode]
    handle: breaker_actor.BreakerHandle
    published: list[tuple[int, BreakerChanged]] = field(default_factory=list)

    async def feed(self, seconds: int, price: int = PRICE) -> None:
        """One tick per second for `seconds` seconds, stamped with the arrival time."""
        for _ in range(seconds):
            await self.ticks.send(Tick(symbol=SYMBOL, ts=self.clock.now_ms(), price=price))
            await trio.sleep(1)


@asynccontextmanager
async def running_breaker() -> AsyncIterator[Rig]:
    clock = Clock(epoch_ms=T0)
    tick_tx, tick_rx = trio.open_memory_channel[Tick](64)  # a test's bursts are short
    state_tx, state_rx = trio.open_memory_channel[BreakerChanged](64)
    override_tx, override_rx = trio.open_memory_channel[BreakerMode](4)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            partial(breaker_actor.run, CFG, clock, tick_rx, [state_tx], override_rx, symbol=SYMBOL)
        )
        rig = Rig(clock, tick_tx, override_tx, handle)

        async def record() -> None:
            async for change in state_rx:
                rig.published.append((clock.now_ms(), change))

        nursery.start_soon(record)
        yield rig
        nursery.cancel_scope.cancel()


def gauge() -> float:
    return BREAKER_OPEN.labels(symbol=SYMBOL)._value.get()  # type: ignore[no-any-return]


async def test_actor_opens_10_s_after_the_feed_stops_and_closes_after_30_s_of_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_breaker() as rig:
        await rig.feed(45)  # ticks at 0..44 s
        await trio.sleep(19)
        assert rig.clock.now_ms() == T0 + 64_000
        seen = [(at, c.state, c.reason, c.at) for at, c in rig.published]
        assert seen == [
            (T0, "open", "startup", T0),
            (T0 + 30_000, "closed", "recovered", T0 + 30_000),
            (T0 + 54_000, "open", "stale_feed", T0 + 54_000),
        ]
        assert rig.handle.state() == "open"
        assert gauge() == 1

        await rig.feed(29)  # resumes at 64 s: 30 s of fresh ticks are needed again
        assert rig.clock.now_ms() == T0 + 93_000
        assert len(rig.published) == 3
        await rig.feed(2)
        assert [c for _, c in rig.published[3:]] == [
            BreakerChanged(state="closed", reason="recovered", at=T0 + 94_000, symbol=SYMBOL)
        ]
        assert rig.handle.state() == "closed"
        assert gauge() == 0


async def test_actor_opens_on_a_jump(autojump_clock: trio.testing.MockClock) -> None:
    async with running_breaker() as rig:
        await rig.feed(31)
        assert rig.handle.state() == "closed"
        await rig.feed(1, price=PRICE * 2)
        assert rig.handle.reason() == "jump"
        assert rig.published[-1][1] == BreakerChanged(
            state="open", reason="jump", at=T0 + 31_000, symbol=SYMBOL
        )


async def test_actor_applies_overrides_and_auto_returns_to_the_rules(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_breaker() as rig:
        await rig.overrides.send("closed")
        await trio.sleep(0.001)
        assert rig.handle.state() == "closed"
        assert rig.handle.mode() == "closed"
        await trio.sleep(3600)  # no feed at all: the override holds
        assert rig.handle.state() == "closed"
        await rig.overrides.send("open")
        await rig.feed(31)  # the rules would close by now; the override holds it open
        assert rig.handle.state() == "open"
        await rig.overrides.send("auto")
        await trio.sleep(0.001)
        assert (rig.handle.state(), rig.handle.reason()) == ("closed", "recovered")
        reasons = [(c.state, c.reason) for _, c in rig.published]
        assert reasons == [
            ("open", "startup"),
            ("closed", "override"),
            ("open", "override"),
            ("closed", "recovered"),
        ]


async def test_actor_wakes_only_at_deadlines_never_polls(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wakeups: list[int] = []
    on_time = Breaker.on_time

    def counting(self: Breaker, now_ms: int) -> list[BreakerChanged]:
        wakeups.append(now_ms)
        return on_time(self, now_ms)

    monkeypatch.setattr(Breaker, "on_time", counting)
    async with running_breaker() as rig:
        await rig.feed(45)
        await trio.sleep(3600)
        assert wakeups == [T0 + 30_000, T0 + 54_000]  # the close and the stale deadline


async def test_actor_opens_on_ticks_that_arrive_late_and_recovers_on_timely_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 9, defect 10 at actor level: a feed 2.5 s behind the exchange opens the breaker
    (late_feed) though ticks keep coming; 30 s of timely ticks close it again."""
    async with running_breaker() as rig:
        await rig.feed(31)
        assert rig.handle.state() == "closed"
        for _ in range(10):
            await rig.ticks.send(Tick(symbol=SYMBOL, ts=rig.clock.now_ms() - 2_500, price=PRICE))
            await trio.sleep(1)
        assert (rig.handle.state(), rig.handle.reason()) == ("open", "late_feed")
        assert gauge() == 1
        last_late = rig.clock.now_ms() - 1_000
        await rig.feed(31)
        assert rig.handle.state() == "closed"
        seen = [(c.state, c.reason, c.at) for _, c in rig.published]
        assert seen == [
            ("open", "startup", T0),
            ("closed", "recovered", T0 + 30_000),
            # The first two late ticks are older than the last timely one (30 s): ignored.
            ("open", "late_feed", T0 + 33_000),
            ("closed", "recovered", last_late + 30_000),
        ]
