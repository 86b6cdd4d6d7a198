"""The market actor: turns ticks into volatility, cached quote grids and market-data frames.

It owns one `GridBook`, one `EwmaVolatility` and one `TickInterval` per configured market. For
every tick it updates σ and the tick interval, publishes a `price` frame on `prices:{symbol}` and
refreshes the grid; every grid it computes is published on `grid:{symbol}` — at most once per
`pricing.refresh_ms` from ticks, at once on a column roll or a breaker change, and at least once a
second even when no tick comes. The edge reads the same grids through the `MarketHandle` it hands
to `task_status.started`.

Quote age: a grid may be up to `refresh_ms` older than the newest tick, and every tick goes out to
players at once, so a player could see the price move toward a cell and bet on the older, now
too generous, quote (the audit measures that adverse selection at well above 1 − edge for the
cells the price moved toward: docs/pricing.md). So admission never quotes from an older tick:
when the cached grid is older, `MarketHandle.quote_cell` has the book price the asked cell from
the newest tick (`GridBook.quote_tick`: that cell alone, memoized for the tick, exactly as a full
requote would price it; the whole grid at once when a full requote is due anyway or after
`CELL_REQUOTES_PER_TICK` cells of one tick). A bet then locks exactly the price every player has
seen; the published grid still follows `refresh_ms` and the 1 Hz push.

A tick older than the market's last one is skipped (the grid must not move back to an older
price). The breaker is taken as open until the breaker actor says closed. `BreakerChanged` names no
symbol, so it applies to every market. When the tick channel ends, the actor returns.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from tap.config import Config, MarketConfig, PricingConfig
from tap.grid import current_column
from tap.messages import (
    BreakerChanged,
    BreakerStateName,
    GridView,
    MarketState,
    Tick,
    WsGrid,
    WsOut,
    WsPrice,
)
from tap.pricing import EwmaVolatility, TickInterval
from tap.quotes import GridBook, GridPlan, Quote, QuoteRefusal, fixed_monitoring_interval
from tap.runtime.clock import Clock

# A grid goes out at least this often with no tick at all (API.md: "at least 1 Hz").
GRID_HEARTBEAT_MS = 1000

Publish = Callable[[str, WsOut], None]
# Where the core's market tells the edges what it prices with (scale-out: `actors/bus.py`).
StateSink = Callable[[MarketState], None]


class _Adopted:
    """A mirror's volatility: the σ the core last sent (it has the whole tick history)."""

    __slots__ = ("sigma",)

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma


class _Market:
    """One market's mutable state; only the actor's tasks write it."""

    __slots__ = (
        "asked",
        "book",
        "breaker",
        "fixed_interval",
        "interval",
        "last_tick",
        "published",
        "published_at",
        "published_column",
        "tick_arrived",
        "volatility",
    )

    def __init__(self, market: MarketConfig, cfg: Config) -> None:
        pricing: PricingConfig = cfg.pricing
        self.fixed_interval = fixed_monitoring_interval(cfg)
        self.book = GridBook(market, pricing, self.fixed_interval)
        self.volatility: EwmaVolatility | _Adopted = EwmaVolatility(pricing)
        # The stream's own cadence, for feeds whose cadence the configuration does not fix.
        self.interval = TickInterval(cfg.feed.sim_tick_ms, cfg.feed.max_gap_ms)
        self.last_tick: Tick | None = None
        self.breaker: BreakerStateName = "open"
        self.published: GridView | None = None
        self.published_at = 0
        self.published_column = 0
        # A quote was asked since the last grid (admission is pricing from ticks): the
        # requoter then prices the whole grid from every new tick, off the event loop.
        self.asked = False
        self.tick_arrived = trio.Event()

    @property
    def interval_ms(self) -> int:
        """The tick interval the grid prices with: fixed by the configuration, or measured."""
        return self.fixed_interval or self.interval.interval_ms

    def refresh(self, now_ms: int, *, force: bool = False) -> GridView | None:
        """`GridBook.refresh` from this market's newest tick (None before the first)."""
        if self.last_tick is None:
            return None
        plan = self.plan(now_ms, force=force)
        if plan is not None:
            self.book.install(self.book.compute(plan))
        return self.book.view

    def plan(self, now_ms: int, *, force: bool = False) -> GridPlan | None:
        """`refresh`'s inputs fixed for a computation elsewhere (`GridBook.plan`): None when no
        tick has come or the cached grid stands."""
        tick = self.last_tick
        if tick is None:
            return None
        return self.book.plan(
            now_ms,
            tick.price,
            tick.ts,
            self.volatility.sigma,
            self.breaker,
            interval_ms=self.interval_ms,
            force=force,
        )

    def publish_grid(self, now_ms: int, publish: Publish, *, heartbeat: bool = False) -> None:
        """Refresh the grid and publish it if it is new (or, for a heartbeat, in any case)."""
        view = self.refresh(now_ms)
        if view is None:
            return
        if not heartbeat:
            if view is self.published:
                return
            # A fresh quote is kept for admission at once, but pushed to clients at 1 Hz, on a
            # column roll and on a breaker change only: a full grid to every subscriber on each
            # refresh would cost more CPU than the bets themselves.
            published = self.published
            if (
                published is not None
                and now_ms - self.published_at < GRID_HEARTBEAT_MS
                and current_column(now_ms, self.book.market.column_ms) == self.published_column
                and view.breaker == published.breaker
            ):
                return
        publish(
            f"grid:{view.symbol}",
            WsGrid(
                symbol=view.symbol,
                as_of=view.as_of,
                price=view.price,
                volatility=view.volatility,
                house_edge_bps=view.house_edge_bps,
                pricing_model=view.pricing_model,
                monitoring_interval_ms=view.monitoring_interval_ms,
                next_tick_ms=view.next_tick_ms,
                breaker=view.breaker,
                cells=view.cells,
            ),
        )
        self.published = view
        self.published_at = now_ms
        self.published_column = current_column(now_ms, self.book.market.column_ms)


class MarketHandle:
    """The edge's read-only window on the market actor's state (no awaits, no copies).

    `quote_cell` is the admission call: it routes by the symbol in the cell id and answers from the
    cached grid — or, if the cache is older than the newest tick, from that tick (the cell alone
    or the whole grid requoted: `GridBook.quote_tick`) — re-checking the column rule at `now_ms`.
    """

    __slots__ = ("_markets",)

    def __init__(self, markets: dict[str, _Market]) -> None:
        self._markets = markets

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._markets)

    def grid(self, symbol: str) -> GridView | None:
        """The last computed grid (shared: do not mutate), or None before the first tick."""
        market = self._markets.get(symbol)
        return None if market is None else market.book.view

    def quote_cell(self, cell_id: str, now_ms: int) -> Quote | QuoteRefusal:
        market = self._markets.get(cell_id.partition(":")[0])
        if market is None:
            return QuoteRefusal("cell_not_placeable", f"cell {cell_id[:80]!r} is in no market")
        market.asked = True
        tick = market.last_tick
        if tick is None or (tick.ts, tick.price) == market.book.priced_tick:
            return market.book.quote(cell_id, now_ms)
        # A tick newer than the cached grid is already on the players' screens: the book quotes
        # from it (the asked cell alone, or the whole grid when a full requote is due anyway).
        return market.book.quote_tick(
            cell_id,
            now_ms,
            tick.price,
            tick.ts,
            market.volatility.sigma,
            market.breaker,
            interval_ms=market.interval_ms,
        )

    def last_tick(self, symbol: str) -> Tick | None:
        market = self._markets.get(symbol)
        return None if market is None else market.last_tick

    def breaker_state(self, symbol: str) -> BreakerStateName:
        """The breaker as this actor last heard it; unknown markets are always open."""
        market = self._markets.get(symbol)
        return "open" if market is None else market.breaker

    def volatility(self, symbol: str) -> float | None:
        market = self._markets.get(symbol)
        return None if market is None else market.volatility.sigma


async def run(
    cfg: Config,
    clock: Clock,
    ticks: trio.MemoryReceiveChannel[Tick],
    breaker_states: trio.MemoryReceiveChannel[BreakerChanged],
    publish: Publish,
    *,
    states: StateSink | None = None,
    offload: bool = False,
    task_status: trio.TaskStatus[MarketHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until `ticks` ends. `publish` is the hub's synchronous, non-blocking fan-out;
    `states`, if given, hears every accepted tick with the σ and interval it is priced with
    (the core hands them to the edges' mirrors). `offload`: price grids in a worker thread
    (`_requote_on_ticks`; the servers pass True)."""
    markets = {m.symbol: _Market(m, cfg) for m in cfg.markets}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_follow_breaker, markets, clock, breaker_states, publish)
        for market in markets.values():
            nursery.start_soon(_keep_grid_fresh, market, clock, publish, offload)
            nursery.start_soon(_requote_on_ticks, market, clock, publish, offload)
        task_status.started(MarketHandle(markets))
        async with ticks:
            async for tick in ticks:
                quoted = markets.get(tick.symbol)
                if quoted is None:
                    continue  # a feed for a market we do not quote; nothing to price
                last = quoted.last_tick
                if last is not None and tick.ts < last.ts:
                    continue  # older than the price we already quote from: it must not win
                sigma = quoted.volatility.update(tick.ts, tick.price)  # type: ignore[union-attr]
                quoted.interval.update(tick.ts)
                quoted.last_tick = tick
                if states is not None:
                    states(MarketState(tick=tick, sigma=sigma, interval_ms=quoted.interval_ms))
                publish(
                    f"prices:{tick.symbol}",
                    WsPrice(symbol=tick.symbol, ts=tick.ts, price=tick.price),
                )
                quoted.tick_arrived.set()
        nursery.cancel_scope.cancel()


async def run_mirror(
    cfg: Config,
    clock: Clock,
    incoming: trio.MemoryReceiveChannel[MarketState | BreakerChanged],
    publish: Publish,
    *,
    offload: bool = False,
    task_status: trio.TaskStatus[MarketHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """An edge's market: the core's ticks with the σ and tick interval the core priced them with,
    and the core's breaker changes, turned into the same grids, quotes and frames as `run` (the
    grid is a pure function of those values and the time). Runs until `incoming` ends.

    A mirror adopts σ instead of estimating it, so an edge that joined late or missed a message
    quotes what the core quotes from the next tick on. The breaker starts open: an edge admits
    nothing until the core has said it is closed."""
    markets = {m.symbol: _Market(m, cfg) for m in cfg.markets}
    for market in markets.values():
        market.volatility = _Adopted(cfg.pricing.vol_initial)
    async with trio.open_nursery() as nursery:
        for market in markets.values():
            nursery.start_soon(_keep_grid_fresh, market, clock, publish, offload)
            nursery.start_soon(_requote_on_ticks, market, clock, publish, offload)
        task_status.started(MarketHandle(markets))
        async with incoming:
            async for message in incoming:
                match message:
                    case MarketState(tick=tick, sigma=sigma, interval_ms=interval_ms):
                        quoted = markets.get(tick.symbol)
                        if quoted is None:
                            continue
                        last = quoted.last_tick
                        if last is not None and tick.ts < last.ts:
                            continue
                        quoted.volatility = _Adopted(sigma)
                        quoted.fixed_interval = interval_ms
                        quoted.last_tick = tick
                        publish(
                            f"prices:{tick.symbol}",
                            WsPrice(symbol=tick.symbol, ts=tick.ts, price=tick.price),
                        )
                        quoted.tick_arrived.set()
                    case BreakerChanged(state=state):
                        for market in markets.values():
                            if market.breaker != state:
                                market.breaker = state
                                market.publish_grid(clock.now_ms(), publish)
        nursery.cancel_scope.cancel()


async def _follow_breaker(
    markets: dict[str, _Market],
    clock: Clock,
    breaker_states: trio.MemoryReceiveChannel[BreakerChanged],
    publish: Publish,
) -> None:
    """Apply every breaker change to every market and republish their grids at once."""
    async with breaker_states:
        async for change in breaker_states:
            for market in markets.values():
                if market.breaker != change.state:
                    market.breaker = change.state
                    market.publish_grid(clock.now_ms(), publish)


async def _requote_on_ticks(market: _Market, clock: Clock, publish: Publish, offload: bool) -> None:
    """Price the grid from new ticks in a worker thread, and publish it (`publish_grid`).

    On each new tick: when a full grid is due anyway (`refresh_ms`, a column roll, a breaker
    change) or when admission has asked for a quote since the last grid — then every bet after
    this tick would otherwise pay for pricing it (`GridBook.quote_tick`) on the event loop. The
    inputs are fixed here (`GridBook.plan`), the pricing runs in a thread (numpy lets go of the
    interpreter for most of it), and the grid is installed back here unless admission installed
    a newer one meanwhile. Ticks that arrive during a computation are folded into the next one,
    and the next one waits as long as the last took: at most half of a core, however dense the
    feed.
    """
    while True:
        await market.tick_arrived.wait()
        market.tick_arrived = trio.Event()
        tick = market.last_tick
        book = market.book
        if tick is None or (tick.ts, tick.price) == book.priced_tick:
            continue
        now = clock.now_ms()
        plan = market.plan(now, force=market.asked)
        if plan is None:
            # Nobody is quoting and no grid is due; a grid admission priced may still be new.
            market.publish_grid(now, publish)
            continue
        market.asked = False
        started = trio.current_time()
        if offload:
            grid = await trio.to_thread.run_sync(book.compute, plan)
        else:
            grid = book.compute(plan)
        book.install(grid)
        market.publish_grid(clock.now_ms(), publish)
        await trio.sleep(trio.current_time() - started)


async def _keep_grid_fresh(
    market: _Market, clock: Clock, publish: Publish, offload: bool = False
) -> None:
    """Wake at every column roll and whenever a second passed since the last grid went out.

    At a roll the book recomputes (the columns moved), so the new grid goes out at the boundary;
    a heartbeat republishes even a cached grid, so a client always hears at least 1 Hz. With
    `offload` a due grid is priced in a worker thread first, like `_requote_on_ticks` does: a
    roll's grid (often with σ to renew) held the event loop for 10–20 ms under load, every 5 s.
    """
    column_ms = market.book.market.column_ms
    while True:
        now = clock.now_ms()
        next_roll = (current_column(now, column_ms) + 1) * column_ms
        if market.published is None:
            heartbeat_at = now + GRID_HEARTBEAT_MS  # no tick yet: nothing to publish, just wait
        else:
            heartbeat_at = market.published_at + GRID_HEARTBEAT_MS
        wake = min(next_roll, heartbeat_at)
        if wake > now:
            await clock.sleep_until_ms(wake)
        else:
            await trio.lowlevel.checkpoint()
        # The clock is float-derived: never let rounding put "now" a millisecond before the wake.
        now = max(clock.now_ms(), wake)
        if market.published is None:
            continue
        rolled = current_column(now, column_ms) != market.published_column
        if rolled or now - market.published_at >= GRID_HEARTBEAT_MS:
            if offload:
                await _price_due_grid_in_thread(market, now)
                now = max(clock.now_ms(), now)
            market.publish_grid(now, publish, heartbeat=True)


async def _price_due_grid_in_thread(market: _Market, now_ms: int) -> None:
    """If the book's grid is due at `now_ms`, price it in a worker thread and install it (unless
    a newer one was installed meanwhile); `publish_grid` then finds it in place."""
    plan = market.plan(now_ms)
    if plan is not None:
        book = market.book
        book.install(await trio.to_thread.run_sync(book.compute, plan))
