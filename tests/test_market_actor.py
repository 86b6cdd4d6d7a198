"""Pins `actors.market`: what it publishes and when, and what its handle answers the edge.

Time is trio's `autojump_clock`: `trio.sleep` moves virtual time, so seconds of grid heartbeats
and column rolls run in milliseconds, and every publish is stamped with the actor's clock.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
import pytest
import trio

from actors import market
from actors.market import MarketHandle
from tap.config import Config, MarketConfig, PricingConfig
from tap.messages import BreakerChanged, GridView, Tick, WsGrid, WsOut, WsPrice
from tap.quotes import GridBook, Quote, QuoteRefusal
from tap.runtime.clock import Clock

C = 346_458_010
EPOCH = C * 5_000 + 1_000  # 1 s into column C
PRICE = 10_012_345


@dataclass
class Harness:
    clock: Clock
    handle: MarketHandle
    ticks: trio.MemorySendChannel[Tick]
    breaker: trio.MemorySendChannel[BreakerChanged]
    published: list[tuple[int, str, WsOut]] = field(default_factory=list)

    def grids(self) -> list[tuple[int, WsGrid]]:
        return [(t, m) for t, ch, m in self.published if isinstance(m, WsGrid)]

    def prices(self) -> list[WsPrice]:
        return [m for _, ch, m in self.published if isinstance(m, WsPrice)]

    async def tick(self, price: int = PRICE, symbol: str = "BTC-USD") -> None:
        await self.ticks.send(Tick(symbol=symbol, ts=self.clock.now_ms(), price=price))
        await trio.sleep(0.001)  # let the actor take it


async def _start(nursery: trio.Nursery, cfg: Config | None = None) -> Harness:
    clock = Clock(epoch_ms=EPOCH)
    # Tests send one message at a time and let the actor drain it; a small buffer is plenty.
    tick_send, tick_recv = trio.open_memory_channel[Tick](8)
    breaker_send, breaker_recv = trio.open_memory_channel[BreakerChanged](2)
    published: list[tuple[int, str, WsOut]] = []

    def publish(channel: str, message: WsOut) -> None:
        if isinstance(message, WsPrice):
            assert channel == f"prices:{message.symbol}"
        if isinstance(message, WsGrid):
            assert channel == f"grid:{message.symbol}"
        published.append((clock.now_ms(), channel, message))

    handle = await nursery.start(
        market.run, cfg or Config(), clock, tick_recv, breaker_recv, publish
    )
    return Harness(clock, handle, tick_send, breaker_send, published)


async def _close_breaker(h: Harness) -> None:
    await h.breaker.send(BreakerChanged(state="closed", reason="recovered", at=h.clock.now_ms()))
    await trio.sleep(0.001)


async def test_every_tick_is_published_as_a_price(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        h = await _start(nursery)
        sent = []
        for i in range(5):
            await h.tick(PRICE + i * 7)
            sent.append((h.clock.now_ms() - 1, PRICE + i * 7))
        assert [(p.ts, p.price) for p in h.prices()] == sent
        assert all(p.symbol == "BTC-USD" for p in h.prices())
        last = h.handle.last_tick("BTC-USD")
        assert last is not None and last.price == PRICE + 28
        nursery.cancel_scope.cancel()


async def test_breaker_is_open_until_the_breaker_actor_says_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        h = await _start(nursery)
        assert h.handle.grid("BTC-USD") is None
        assert h.handle.breaker_state("BTC-USD") == "open"
        await h.tick()
        (_, first), *_ = h.grids()
        assert first.breaker == "open" and not any(c.placeable for c in first.cells)
        far = f"BTC-USD:{C + 12}:10012"
        refusal = h.handle.quote_cell(far, h.clock.now_ms())
        assert isinstance(refusal, QuoteRefusal) and refusal.code == "breaker_open"

        await _close_breaker(h)
        at, closed = h.grids()[-1]
        assert closed.breaker == "closed" and at < EPOCH + 10  # republished at once
        assert h.handle.breaker_state("BTC-USD") == "closed"
        quote = h.handle.quote_cell(far, h.clock.now_ms())
        shown = next(c for c in closed.cells if c.cell_id == far)
        assert isinstance(quote, Quote) and shown.placeable
        assert quote.multiplier_bps == shown.multiplier_bps
        nursery.cancel_scope.cancel()


async def test_grid_goes_out_every_second_and_at_every_column_roll_without_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        h = await _start(nursery)
        await trio.sleep(0.3)  # heartbeats fall 300 ms off the column boundaries
        await h.tick()
        await trio.sleep(16)
        grids = h.grids()
        times = [t for t, _ in grids]
        assert all(b - a <= 1_000 for a, b in itertools.pairwise(times))
        assert h.clock.now_ms() - times[-1] <= 1_000
        for boundary in ((C + k) * 5_000 for k in (1, 2, 3)):
            at_roll = [g for t, g in grids if t == boundary]
            assert at_roll, f"no grid published at the roll {boundary}"
            assert at_roll[0].cells[0].t_start == boundary + 5_000  # first column is c + 1
        nursery.cancel_scope.cancel()


async def test_quotes_refresh_every_refresh_ms_but_clients_get_grids_at_1_hz(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = Config(pricing=PricingConfig(refresh_ms=250))
    async with trio.open_nursery() as nursery:
        h = await _start(nursery, cfg)
        as_ofs = set()
        for _ in range(100):  # 100 ticks 10 ms apart, inside one column
            await h.ticks.send(Tick(symbol="BTC-USD", ts=h.clock.now_ms(), price=PRICE))
            await trio.sleep(0.010)
            view = h.handle.grid("BTC-USD")
            assert view is not None
            as_ofs.add(view.as_of)
        assert len(h.prices()) == 100
        assert 4 <= len(as_ofs) <= 5  # admission's quotes: one recompute per 250 ms
        assert 1 <= len(h.grids()) <= 2  # what subscribers get: the first grid, then 1 Hz
        nursery.cancel_scope.cancel()


async def test_ticks_for_markets_not_configured_are_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        h = await _start(nursery)
        await h.tick(symbol="DOGE-USD")
        await trio.sleep(3)
        assert h.published == []
        assert h.handle.last_tick("DOGE-USD") is None
        refusal = h.handle.quote_cell(f"DOGE-USD:{C + 5}:1", h.clock.now_ms())
        assert isinstance(refusal, QuoteRefusal) and refusal.code == "cell_not_placeable"
        nursery.cancel_scope.cancel()


async def test_volatility_follows_the_ticks(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        h = await _start(nursery)
        assert h.handle.volatility("BTC-USD") == Config().pricing.vol_initial
        for i in range(40):
            await h.tick(PRICE + (5_000 if i % 2 else 0))  # ±0.05 % every ms: wild
        vol = h.handle.volatility("BTC-USD")
        assert vol is not None and vol > Config().pricing.vol_initial
        await trio.sleep(1)  # the next grid (a heartbeat, refresh_ms later) prices with it
        view = h.handle.grid("BTC-USD")
        assert view is not None and view.volatility > Config().pricing.vol_initial
        nursery.cancel_scope.cancel()


async def test_actor_returns_when_the_tick_channel_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        h = await _start(nursery)
        await h.tick()
        await h.ticks.aclose()
    # reaching here means `run` returned and took its timer and breaker tasks with it
    assert len(h.prices()) == 1


async def test_a_tick_older_than_the_last_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        h = await _start(nursery)
        await h.tick(PRICE)
        newest = h.handle.last_tick("BTC-USD")
        assert newest is not None
        await h.ticks.send(Tick(symbol="BTC-USD", ts=newest.ts - 5, price=PRICE + 9_000))
        await trio.sleep(0.001)
        assert h.handle.last_tick("BTC-USD") == newest
        assert [p.price for p in h.prices()] == [PRICE]
        nursery.cancel_scope.cancel()


async def test_admission_requotes_from_a_tick_newer_than_the_cached_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Quote age (docs/pricing.md): every tick reaches players at once, so a bet must never lock
    a quote priced before the newest tick — the price may have moved toward the cell."""
    cfg = Config(pricing=PricingConfig(refresh_ms=500))
    async with trio.open_nursery() as nursery:
        h = await _start(nursery, cfg)
        await _close_breaker(h)
        await h.tick(PRICE)
        cached = h.handle.grid("BTC-USD")
        assert cached is not None
        await trio.sleep(0.1)
        moved = PRICE + 4_000  # four rows up, 100 ms later: inside refresh_ms, grid not due
        await h.tick(moved)
        assert h.handle.grid("BTC-USD") is cached  # the eager refresh still waits for 500 ms
        far = f"BTC-USD:{C + 3}:{moved // 1_000 + 2}"
        now = h.clock.now_ms()
        quote = h.handle.quote_cell(far, now)
        assert isinstance(quote, Quote)
        newest = h.handle.last_tick("BTC-USD")
        assert newest is not None and quote.as_of == newest.ts
        # Exactly the full requote's quote from the newest tick (with the grid's σ) ...
        full = GridBook(cfg.markets[0], cfg.pricing, 250)
        full.refresh(now, moved, newest.ts, cached.volatility, "closed", force=True)
        assert quote == full.quote(far, now)
        # ... priced for that cell alone: the grid stays as the actor last computed it.
        assert h.handle.grid("BTC-USD") is cached
        shown = next(c for c in cached.cells if c.cell_id == far)
        assert quote.multiplier_bps < shown.multiplier_bps  # the stale quote overpaid
        again = h.handle.quote_cell(far, h.clock.now_ms())
        assert again is quote  # once per tick, not per bet
        nursery.cancel_scope.cancel()


async def test_the_grid_publishes_the_tick_interval_it_prices_with(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The simulator's cadence is known; any other feed's is measured from its ticks."""
    async with trio.open_nursery() as nursery:
        h = await _start(nursery, Config())
        await _close_breaker(h)
        await h.tick()
        view = h.handle.grid("BTC-USD")
        assert view is not None and view.monitoring_interval_ms == 250
        assert view.pricing_model == "discrete_ticks"
        assert view.next_tick_ms == view.as_of + 250
        nursery.cancel_scope.cancel()
    cfg = msgspec.structs.replace(
        Config(), feed=msgspec.structs.replace(Config().feed, source="manual")
    )
    async with trio.open_nursery() as nursery:
        h = await _start(nursery, cfg)
        await _close_breaker(h)
        for _ in range(200):
            await h.tick()
            await trio.sleep(0.099)  # a tick every 100 ms (the helper sleeps 1 ms itself)
        await trio.sleep(1)  # the heartbeat grid carries the estimate
        view = h.handle.grid("BTC-USD")
        assert view is not None and view.monitoring_interval_ms == 100
        nursery.cancel_scope.cancel()


async def test_once_admission_quotes_the_grid_is_priced_from_each_new_tick_in_a_thread() -> None:
    """`offload` (what the servers run): after a quote was asked, the next tick's whole grid is
    priced in a worker thread and installed, so the bets after it quote from the grid instead of
    pricing on the event loop — and the grid is exactly the one a synchronous requote gives.
    Real time and a real thread (an autojump clock would jump while the thread works)."""
    # σ never due: only `asked` requotes; and a column roll (which makes a grid due too) is
    # kept out of the test's few hundred milliseconds.
    cfg = Config(pricing=PricingConfig(refresh_ms=60_000), markets=[MarketConfig(column_ms=60_000)])
    clock = Clock()
    into_column = clock.now_ms() % 60_000
    if into_column > 50_000:
        await trio.sleep((60_000 - into_column) / 1000 + 0.05)
    tick_send, tick_recv = trio.open_memory_channel[Tick](8)
    breaker_send, breaker_recv = trio.open_memory_channel[BreakerChanged](2)
    grids: list[WsGrid] = []

    def publish(channel: str, message: WsOut) -> None:
        if isinstance(message, WsGrid):
            grids.append(message)

    async def priced_from(tick: Tick) -> GridView:
        with trio.fail_after(10):
            while True:
                view = handle.grid("BTC-USD")
                if view is not None and view.as_of == tick.ts and view.price == tick.price:
                    return view
                await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            partial(market.run, cfg, clock, tick_recv, breaker_recv, publish, offload=True)
        )
        await breaker_send.send(BreakerChanged(state="closed", reason="ok", at=clock.now_ms()))
        first = Tick(symbol="BTC-USD", ts=clock.now_ms(), price=PRICE)
        await tick_send.send(first)
        view = await priced_from(first)  # the first grid is due: priced without being asked
        # Nobody quotes: a new tick inside refresh_ms leaves the grid as it is.
        await trio.sleep(0.01)
        idle = Tick(symbol="BTC-USD", ts=clock.now_ms(), price=PRICE + 1_500)
        await tick_send.send(idle)
        await trio.sleep(0.2)
        assert handle.grid("BTC-USD") is view
        # A quote is asked (priced from `idle` on the spot), then the next tick: the whole grid
        # follows it, off the loop.
        cell = next(c.cell_id for c in view.cells if c.placeable)
        assert isinstance(handle.quote_cell(cell, clock.now_ms()), Quote | QuoteRefusal)
        await trio.sleep(0.01)
        moved = Tick(symbol="BTC-USD", ts=clock.now_ms(), price=PRICE + 3_000)
        await tick_send.send(moved)
        fresh = await priced_from(moved)
        same = GridBook(cfg.markets[0], cfg.pricing, 250)
        same.refresh(fresh.as_of, moved.price, moved.ts, view.volatility, "closed", force=True)
        expected = same.view
        assert expected is not None
        assert [(c.cell_id, c.multiplier_bps) for c in fresh.cells] == [
            (c.cell_id, c.multiplier_bps) for c in expected.cells
        ]
        quote = handle.quote_cell(cell, clock.now_ms())
        if isinstance(quote, Quote):
            assert quote.as_of == moved.ts  # from the installed grid, not the older tick
        nursery.cancel_scope.cancel()


async def test_with_offload_a_column_roll_s_grid_is_priced_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`offload`: the grid a column roll makes due is priced off the event loop before it is
    published, and it is the grid of the new column. Real time and a real thread."""
    cfg = Config(markets=[MarketConfig(column_ms=400)])
    clock = Clock()
    tick_send, tick_recv = trio.open_memory_channel[Tick](8)
    breaker_send, breaker_recv = trio.open_memory_channel[BreakerChanged](2)
    grids: list[WsGrid] = []
    computed_in: dict[int, str] = {}  # the column a grid was planned in → the pricing thread
    compute = GridBook.compute

    def recording_compute(self: GridBook, plan: Any) -> Any:
        computed_in[plan.now_ms // 400] = threading.current_thread().name
        return compute(self, plan)

    monkeypatch.setattr(GridBook, "compute", recording_compute)

    new_column = trio.Event()

    def publish(channel: str, message: WsOut) -> None:
        if isinstance(message, WsGrid):
            if grids and message.cells[0].t_start != grids[0].cells[0].t_start:
                new_column.set()
            grids.append(message)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(market.run, cfg, clock, tick_recv, breaker_recv, publish, offload=True)
        )
        await breaker_send.send(BreakerChanged(state="closed", reason="ok", at=clock.now_ms()))
        await tick_send.send(Tick(symbol="BTC-USD", ts=clock.now_ms(), price=PRICE))
        await trio.sleep(0.05)  # the first grid (priced on the tick)
        assert grids
        first_column = grids[0].cells[0].t_start
        with trio.fail_after(10):  # no tick: only the roll makes a new grid due
            await new_column.wait()
        nursery.cancel_scope.cancel()
    rolled = grids[-1].cells[0].t_start
    assert rolled > first_column
    # The rolled grid's first column is the one after the column it was priced in.
    assert computed_in[rolled // 400 - 1] != threading.main_thread().name
