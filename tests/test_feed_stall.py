"""A stall of our own event loop never voids bets (issue 9, defect 4), end to end at actor level.

The real ingest actor (built-in simulator), resolver actor and breaker actor, wired as the
supervisor wires them, on trio's MockClock. A stall is `MockClock.jump`: time moves on while no
task runs, exactly what a blocking call on the event loop does. Four hostile WS frames made a
4.7 s stall inside a bet window; before the fix the simulator skipped the ticks of those 4.7 s,
the tick log showed a 4.7 s gap and the resolver voided (refunded) every open bet of the window:
a free option for whoever can freeze the loop. Now the simulator emits every scheduled tick (late,
stamped with its scheduled time), the resolver judges gaps on tick timestamps only, and the bets
are settled by ticks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio
import trio.testing

from actors import breaker as breaker_actor
from actors import ingest
from actors import resolver as resolver_actor
from actors.ingest import TickOutput
from tap.config import Config, decode_config
from tap.feeds import GbmSim
from tap.grid import rows_touched
from tap.messages import (
    Bet,
    BreakerChanged,
    BreakerMode,
    Outcome,
    PlaceBet,
    Settle,
    StoreTicks,
    Tick,
    WriterRequest,
)
from tap.runtime.clock import Clock

SYMBOL = "BTC-USD"
ADDRESS = "0x" + "cd" * 20
COLUMN_MS = 5_000
ROW = 1_000
COL = 346_458_012
T0 = COL * COLUMN_MS  # the window under test is [T0, T0 + 5000)
START = T0 - 32_000  # the feed starts early enough for the breaker to have closed
STALL_AT = T0 + 100  # the loop freezes just after the window's first tick ...
STALL_S = 4.7  # ... for the 4.7 s the issue measured


def cfg(source: str = "sim") -> Config:
    return decode_config({"feed": {"source": source, "sim_seed": 3}})


def path(config: Config, timestamps: list[int]) -> dict[int, int]:
    """The simulator's price at each scheduled time (the path is a function of time)."""
    f = config.feed
    sim = GbmSim(f.sim_seed, f.sim_sigma, f.sim_tick_ms, f.sim_start_price)
    return {ts: sim.next(ts) for ts in timestamps}


def bet(row: int, n: int) -> Bet:
    return Bet(
        bet_id=f"b{n}",
        address=ADDRESS,
        cell_id=f"{SYMBOL}:{COL}:{row}",
        amount=1_000_000,
        multiplier_bps=30_000,
        nonce=f"nonce-stall-{n}-0123456789",
        status="confirmed",
        accepted_at=START,
    )


@dataclass
class Rig:
    clock: Clock
    bets: trio.MemorySendChannel[Bet | PlaceBet]
    written: list[WriterRequest]
    published: list[BreakerChanged]
    handle: breaker_actor.BreakerHandle
    feed: ingest.FeedStatus | None = None

    def outcomes(self) -> dict[str, Outcome]:
        return {o.bet_id: o for r in self.written if isinstance(r, Settle) for o in r.outcomes}

    def stored(self) -> list[int]:
        return [t.ts for r in self.written if isinstance(r, StoreTicks) for t in r.ticks]


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Rig]:
    clock = Clock(epoch_ms=START)
    # Channel sizes as the supervisor makes them.
    to_breaker_tx, to_breaker_rx = trio.open_memory_channel[Tick](1024)
    to_resolver_tx, to_resolver_rx = trio.open_memory_channel[Tick](4096)
    bets_tx, bets_rx = trio.open_memory_channel[Bet | PlaceBet](64)
    writer_tx, writer_rx = trio.open_memory_channel[WriterRequest](64)
    states_tx, states_rx = trio.open_memory_channel[BreakerChanged](64)
    _overrides_tx, overrides_rx = trio.open_memory_channel[BreakerMode](1)
    written: list[WriterRequest] = []
    published: list[BreakerChanged] = []

    async def drain_writer() -> None:
        async for request in writer_rx:
            written.append(request)

    async def drain_states() -> None:
        async for change in states_rx:
            published.append(change)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_writer)
        nursery.start_soon(drain_states)
        handle = await nursery.start(
            partial(
                breaker_actor.run,
                config.breaker,
                clock,
                to_breaker_rx,
                [states_tx],
                overrides_rx,
                symbol=SYMBOL,
                judge_tick_age=config.feed.source != "sim",
            )
        )
        await nursery.start(
            resolver_actor.run, config, clock, to_resolver_rx, bets_rx, writer_tx, [], None, []
        )
        rig = Rig(clock, bets_tx, written, published, handle)
        rig.feed = await nursery.start(
            ingest.run,
            config,
            clock,
            [
                TickOutput("breaker", to_breaker_tx, lossless=True),
                TickOutput("resolver", to_resolver_tx, lossless=True),
            ],
        )
        yield rig
        nursery.cancel_scope.cancel()


def pick_rows(config: Config) -> tuple[dict[int, int], int, int]:
    """The path's prices, a row it touches only during the stall, and one it never touches."""
    schedule = list(range(START, T0 + COLUMN_MS + 1, config.feed.sim_tick_ms))
    prices = path(config, schedule)
    before = {r for ts in schedule if ts <= T0 for r in rows_touched(prices[ts], ROW)}
    during = [
        r
        for ts in schedule
        if STALL_AT < ts < T0 + COLUMN_MS
        for r in rows_touched(prices[ts], ROW)
        if r not in before
    ]
    assert during, "seed 3 must move the price into a new row inside the window"
    return prices, during[0], max(before) + 40


async def exchange(rig: Rig, prices: dict[int, int], tick_ms: int) -> None:
    """An exchange feed as a socket delivers it: a tick every `tick_ms` at its exchange time.
    While our loop is frozen the exchange goes on and the socket buffers its ticks; they are
    read in one burst afterwards, each with its own exchange `ts`."""
    assert rig.feed is not None and rig.feed.manual is not None
    at = START
    while True:
        await rig.clock.sleep_until_ms(at)
        while at <= rig.clock.now_ms():
            rig.feed.manual.push(prices.get(at, prices[START]), ts=at)
            at += tick_ms


def assert_settled_by_ticks(rig: Rig, prices: dict[int, int]) -> None:
    outcomes = rig.outcomes()
    won, lost = outcomes["b1"], outcomes["b2"]
    assert (won.status, won.reason) == ("won", "touch")
    assert won.decided_by is not None and STALL_AT < won.decided_by.ts < T0 + COLUMN_MS
    assert won.decided_by.price == prices[won.decided_by.ts]  # a tick of the path, on time
    assert (lost.status, lost.reason, lost.payout) == ("lost", "column_end", 0)
    # The log the resolver judged from has every tick: no hole where the loop stalled.
    stored = rig.stored()
    assert stored == list(range(START, stored[-1] + 1, 250))
    assert stored[-1] >= T0 + COLUMN_MS


async def test_a_loop_stall_inside_a_window_voids_nothing_the_ticks_settle_every_bet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The simulator: the stall is caught up with every scheduled tick; the breaker, which
    does not judge the simulator's tick age, stays closed through it."""
    config = cfg("sim")
    prices, touched, untouched = pick_rows(config)
    async with running(config) as rig:
        await rig.bets.send(bet(touched, 1))
        await rig.bets.send(bet(untouched, 2))
        await rig.clock.sleep_until_ms(STALL_AT)
        assert rig.handle.state() == "closed"  # 32 s of ticks: past the 30 s hysteresis
        autojump_clock.jump(STALL_S)  # the loop is frozen: no task runs for 4.7 s
        await rig.clock.sleep_until_ms(T0 + COLUMN_MS + 500)
        assert_settled_by_ticks(rig, prices)
        assert [(c.state, c.reason) for c in rig.published] == [
            ("open", "startup"),
            ("closed", "recovered"),
        ]


async def test_after_a_loop_stall_an_exchange_feeds_burst_may_open_the_breaker_but_voids_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An exchange feed (here pushed as a socket would deliver it): after our 4.7 s stall its
    buffered ticks arrive up to 4.7 s after their exchange time. The breaker cannot tell our
    stall from a feed that trails the market, and our prices *were* behind, so it opens
    (late_feed) and refuses new bets until 30 s of timely ticks. It voids nothing: the resolver
    judges by tick timestamps, which have no gap, and settles the window's bets by ticks."""
    config = cfg("manual")
    prices, touched, untouched = pick_rows(cfg("sim"))
    async with running(config) as rig, trio.open_nursery() as feeding:
        feeding.start_soon(exchange, rig, prices, config.feed.sim_tick_ms)
        await rig.bets.send(bet(touched, 1))
        await rig.bets.send(bet(untouched, 2))
        await rig.clock.sleep_until_ms(STALL_AT)
        assert rig.handle.state() == "closed"
        autojump_clock.jump(STALL_S)
        await rig.clock.sleep_until_ms(T0 + COLUMN_MS + 500)
        assert_settled_by_ticks(rig, prices)
        assert [(c.state, c.reason) for c in rig.published] == [
            ("open", "startup"),
            ("closed", "recovered"),
            ("open", "late_feed"),
        ]
        feeding.cancel_scope.cancel()
