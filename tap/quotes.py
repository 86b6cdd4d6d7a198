"""The cached quote grid of one market: the grid everyone sees and the quotes bets are admitted on.

Decides when a market's grid is recomputed (at most every `pricing.refresh_ms`, at once when the
column rolls or the breaker changes, and whenever the caller forces it), what each cell's
multiplier and placeability are — priced for the win rule actually used, a tick in the band
(`tap.pricing.tick_touch_probabilities`) — and what a bet on a cell id is quoted: the locked
multiplier and the cell's bounds, or the API.md refusal. Admission uses the cached quote (DESIGN
rule 10) while it is priced from the newest tick; when a newer tick has come, admission asks
`quote_tick`, which prices just the asked cell from that tick (exactly the cell a forced full
requote would give it, memoized for the tick) and falls back to a full forced requote when one
is due anyway (column roll, breaker change, new interval, σ past its grace) or after
`CELL_REQUOTES_PER_TICK` distinct cells. So no bet is ever quoted on a price a player has already
seen move (docs/pricing.md, "quote age"). It leaves to its caller the price, its timestamp, σ, the
tick interval and the breaker state, when to call `refresh` and what to publish; `now_ms` is an
argument everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from tap.config import Config, MarketConfig, PricingConfig
from tap.grid import (
    CellBounds,
    CellId,
    NotPlaceable,
    cell_bounds,
    current_column,
    published_rows,
    unplaceable_reason,
)
from tap.messages import BreakerStateName, GridCell, GridView
from tap.pricing import AbsorptionCache, multiplier_bps, tick_touch_probabilities

PRICING_MODEL = "discrete_ticks"  # GridView.pricing_model: docs/pricing.md describes it
# The tick interval a book assumes when its caller names none (the default simulator's cadence).
DEFAULT_INTERVAL_MS = 250
# Distinct cells `quote_tick` prices one by one from a tick before it requotes the whole grid
# instead. A cell alone costs ~1/40 of a forced full requote with σ kept (~70 µs against ~2.5 ms
# at best on the 2-vCPU dev machine; loadgen/benches/bench_pricing.py measures both), so the
# cells of one tick stay under about half a full requote, and a busy tick costs at most ~1.5.
CELL_REQUOTES_PER_TICK = 20
# How many `refresh_ms` a σ may age before admission's requote (`quote_tick`) renews it itself.
# σ falls due every `refresh_ms`, and the market actor renews it in its worker thread on the next
# tick; admission keeps the grid's σ meanwhile, so a bet never pays for the costly part of a
# grid (the rows' recursions for a new σ, ~9 ms against ~2.5 ms with σ kept) on the event loop.
SIGMA_GRACE_REFRESHES = 2
# The per-cell static parts (id, CellId, bounds) kept across grids; full, it starts over.
_STATIC_CELLS_MAX = 4096


def fixed_monitoring_interval(cfg: Config) -> int | None:
    """The tick interval the grid must assume, when the configuration knows it; None: estimate it.

    `pricing.monitoring_interval_ms` > 0 is an operator's override; otherwise the built-in
    simulator's cadence is known exactly, and any other feed's is measured from its stream.
    """
    if cfg.pricing.monitoring_interval_ms > 0:
        return cfg.pricing.monitoring_interval_ms
    if cfg.feed.source == "sim":
        return cfg.feed.sim_tick_ms
    return None


# A refusal is the grid's own verdict: `code` is the API.md error code, `message` the reason.
QuoteRefusal = NotPlaceable


class Quote(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a bet on a cell locks: its geometry and the multiplier priced at `as_of`.

    Flat, so the edge copies the fields straight into `PlaceBet`. One `Quote` object per cell is
    shared by every bet on that snapshot: it is frozen. A struct rather than a dataclass: a grid
    makes 192 of them per requote, and a frozen dataclass costs ~10× as much to construct.
    """

    cell_id: str  # canonical text, "{symbol}:{col}:{row}"
    symbol: str
    col: int
    row: int
    t_start: int  # ms
    t_end: int  # ms
    price_lo: int  # increments
    price_hi: int  # increments
    multiplier_bps: int
    as_of: int  # ms: the price observation the multiplier was computed from

    @property
    def cell(self) -> CellId:
        return CellId(self.symbol, self.col, self.row)

    @property
    def bounds(self) -> CellBounds:
        return CellBounds(self.t_start, self.t_end, self.price_lo, self.price_hi)


class _Static(NamedTuple):
    """What a cell is regardless of price and σ: its canonical id, `CellId` and bounds."""

    cell_id: str
    cell: CellId
    bounds: CellBounds

    def quote(self, multiplier_bps: int, as_of: int) -> Quote:
        """This cell's quote at `multiplier_bps`, priced as of `as_of`."""
        cell, bounds = self.cell, self.bounds
        return Quote(
            cell_id=self.cell_id,
            symbol=cell.symbol,
            col=cell.col,
            row=cell.row,
            t_start=bounds.t_start,
            t_end=bounds.t_end,
            price_lo=bounds.price_lo,
            price_hi=bounds.price_hi,
            multiplier_bps=multiplier_bps,
            as_of=as_of,
        )


class _TickQuotes:
    """The per-cell requotes of one tick, not yet folded into a full grid (`GridBook.quote_tick`).

    Everything a forced full requote from the tick would fix once — as_of, the published rows,
    every column's window — and the quotes priced so far (at most `CELL_REQUOTES_PER_TICK`)."""

    __slots__ = ("as_of", "bands", "quotes", "rows", "tick", "windows")

    def __init__(
        self,
        tick: tuple[int, int],
        as_of: int,
        rows: range,
        bands: list[tuple[int, int]],
        windows: list[tuple[int, int]],
    ) -> None:
        self.tick = tick
        self.as_of = as_of
        self.rows = rows
        self.bands = bands
        self.windows = windows
        self.quotes: dict[str, Quote] = {}


class GridPlan(NamedTuple):
    """Everything one grid is computed from (`GridBook.plan`)."""

    now_ms: int
    price: int
    ts: int
    sigma: float
    sigma_at: int  # when that σ was taken (it is renewed at most every `refresh_ms`)
    breaker: BreakerStateName
    interval_ms: int


class PricedGrid(NamedTuple):
    """A computed grid, not yet the book's (`GridBook.compute`, then `install`)."""

    plan: GridPlan
    view: GridView
    quotes: dict[str, Quote]
    rows: range
    column: int


class GridBook:
    """One market's current grid snapshot and the quotes behind it.

    `refresh` rebuilds the snapshot when it is due and otherwise returns the cached `GridView`
    object itself, so a caller can tell "new grid" with `is`. The view is shared, not copied:
    treat it as read-only. `quote` is a dict lookup plus integer comparisons — it runs for every
    bet — and re-checks the column rule against the `now_ms` it is given, because a snapshot up to
    `refresh_ms` old may straddle a column roll. `quote_tick` is admission's call when its tick may
    be newer than the snapshot.
    """

    __slots__ = (
        "_absorption",
        "_breaker",
        "_column",
        "_computed_at",
        "_interval_ms",
        "_market",
        "_priced_tick",
        "_pricing",
        "_quotes",
        "_rows",
        "_sigma",
        "_sigma_at",
        "_static",
        "_static_ids",
        "_tick_quotes",
        "_view",
    )

    def __init__(
        self, market: MarketConfig, pricing: PricingConfig, interval_ms: int | None = None
    ) -> None:
        """`interval_ms`: the tick interval `refresh` prices with when not told one; by default
        `pricing.monitoring_interval_ms`, or the default simulator's cadence when that is 0."""
        self._market = market
        self._pricing = pricing
        self._interval_ms = interval_ms or pricing.monitoring_interval_ms or DEFAULT_INTERVAL_MS
        self._priced_tick: tuple[int, int] | None = None
        # σ as of the last refresh that took a new one (at most every refresh_ms), and the
        # recursion results for it: a requote from a newer tick in between reuses both.
        self._sigma = 0.0
        self._sigma_at: int | None = None
        self._absorption = AbsorptionCache()
        self._view: GridView | None = None
        self._quotes: dict[str, Quote] = {}
        self._rows = range(0)
        self._column = 0
        self._computed_at = 0
        self._breaker: BreakerStateName = "open"
        self._static: dict[tuple[int, int], _Static] = {}
        self._static_ids: dict[str, _Static] = {}
        self._tick_quotes: _TickQuotes | None = None

    @property
    def market(self) -> MarketConfig:
        return self._market

    @property
    def view(self) -> GridView | None:
        """The cached grid, or None before the first `refresh`."""
        return self._view

    def is_due(self, now_ms: int, breaker: BreakerStateName) -> bool:
        """Would `refresh` recompute: no grid, refresh_ms passed, column rolled, breaker moved?"""
        return (
            self._view is None
            or now_ms - self._computed_at >= self._pricing.refresh_ms
            or current_column(now_ms, self._market.column_ms) != self._column
            or breaker != self._breaker
        )

    @property
    def priced_tick(self) -> tuple[int, int] | None:
        """The tick `(ts, price)` the cached grid is priced from (None before the first
        `refresh`): a caller holding a newer tick forces a requote before admitting on it."""
        return self._priced_tick

    def refresh(
        self,
        now_ms: int,
        price: int,
        ts: int,
        sigma: float,
        breaker: BreakerStateName,
        *,
        interval_ms: int | None = None,
        force: bool = False,
        keep_sigma: bool = False,
    ) -> GridView:
        """The grid at `now_ms` for the latest tick (`ts`, `price`) and volatility `sigma`.

        Recomputed when `is_due` or `force`; otherwise the cached view is returned unchanged (a
        new price alone waits for `refresh_ms` unless forced). σ is taken anew at most every
        `refresh_ms` (or when the interval changes): a forced requote within that time prices
        the new tick with the σ of the last grid, so it reuses that grid's recursion and costs
        ~2 ms instead of ~10. σ is an estimate with a 60 s half-life; half a second of it is
        not information a player can trade on, a moved price is. The grid is priced as of the
        tick's time, not `now_ms` (`as_of = min(ts, now_ms)`): `price` is known exactly at `ts`,
        so anyone can check a quote against the tick log, and the modelled ticks follow it every
        `interval_ms` (default: the book's). How far `ts` trails `now_ms` is bounded elsewhere:
        the grid refreshes on ticks, and a stale feed opens the breaker. `keep_sigma`: keep the
        last grid's σ even when it is due (admission's requote within `SIGMA_GRACE_REFRESHES`).
        """
        plan = self.plan(
            now_ms, price, ts, sigma, breaker,
            interval_ms=interval_ms, force=force, keep_sigma=keep_sigma,
        )  # fmt: skip
        if plan is not None:
            self.install(self.compute(plan))
        assert self._view is not None
        return self._view

    def plan(
        self,
        now_ms: int,
        price: int,
        ts: int,
        sigma: float,
        breaker: BreakerStateName,
        *,
        interval_ms: int | None = None,
        force: bool = False,
        keep_sigma: bool = False,
    ) -> GridPlan | None:
        """What `refresh` would compute (None: the cached grid stands), with every input fixed
        here — σ included — so `compute` can run in another thread while this book keeps
        answering quotes from the grid it has (the market actor's requotes: `actors.market`)."""
        # A book's time never runs backwards: callers' clocks may disagree by a rounding
        # millisecond, and a grid must not roll back to the column it just left.
        now_ms = max(now_ms, self._computed_at)
        if self._view is not None and not force and not self.is_due(now_ms, breaker):
            return None
        interval = interval_ms or self._interval_ms
        sigma_at = self._sigma_at
        if (
            self._view is None
            or sigma_at is None
            or (now_ms - sigma_at >= self._pricing.refresh_ms and not keep_sigma)
            or interval != self._view.monitoring_interval_ms
        ):
            sigma_at = now_ms
        else:
            sigma = self._sigma
        return GridPlan(now_ms, price, ts, sigma, sigma_at, breaker, interval)

    def compute(self, plan: GridPlan) -> PricedGrid:
        """The grid `plan` describes. Reads only the plan, the market and the book's caches
        (whose entries depend on nothing that changes), so it may run in a worker thread."""
        market = self._market
        edge, cap = market.house_edge_bps, market.max_multiplier_bps
        now_ms, price, sigma, interval, breaker = (
            plan.now_ms, plan.price, plan.sigma, plan.interval_ms, plan.breaker
        )  # fmt: skip
        as_of = min(plan.ts, now_ms)
        column = current_column(now_ms, market.column_ms)
        rows = published_rows(price, market.row_height, market.rows)
        columns = range(column + 1, column + 1 + market.columns_ahead)
        bands = [(row * market.row_height, (row + 1) * market.row_height) for row in rows]
        windows = [
            (col * market.column_ms - as_of, (col + 1) * market.column_ms - as_of)
            for col in columns
        ]
        chances = tick_touch_probabilities(price, bands, sigma, interval, windows, self._absorption)
        cells: list[GridCell] = []
        quotes: dict[str, Quote] = {}
        static = self._static
        min_m = market.min_multiplier_bps
        # Every cell here has the market's symbol, a published row and a column ahead, so of
        # `unplaceable_reason` only the lockout, the minimum and the breaker can refuse it.
        first_open = column + market.lockout_columns + 1
        closed = breaker == "closed"
        for j, col in enumerate(columns):
            col_open = closed and col >= first_open
            for i, row in enumerate(rows):
                known = static.get((col, row)) or self._static_cell(col, row)
                cell_id, bounds = known.cell_id, known.bounds
                m = multiplier_bps(chances[i][j], edge, cap)
                cells.append(
                    GridCell(
                        cell_id=cell_id,
                        t_start=bounds.t_start,
                        t_end=bounds.t_end,
                        price_lo=bounds.price_lo,
                        price_hi=bounds.price_hi,
                        multiplier_bps=m,
                        placeable=col_open and m >= min_m,
                    )
                )
                quotes[cell_id] = known.quote(m, as_of)
        view = GridView(
            symbol=market.symbol,
            as_of=as_of,
            price=price,
            volatility=sigma,
            house_edge_bps=edge,
            pricing_model=PRICING_MODEL,
            monitoring_interval_ms=interval,
            next_tick_ms=as_of + interval,
            breaker=breaker,
            cells=cells,
        )
        return PricedGrid(plan, view, quotes, rows, column)

    def install(self, grid: PricedGrid) -> bool:
        """Make `grid` the book's grid, unless one planned later (a newer `now_ms`, or a newer
        tick at the same time) was installed meanwhile; True if it was installed."""
        plan = grid.plan
        if plan.now_ms < self._computed_at or (
            self._priced_tick is not None
            and plan.now_ms == self._computed_at
            and plan.ts < self._priced_tick[0]
        ):
            return False
        self._view = grid.view
        self._quotes = grid.quotes
        self._tick_quotes = None
        self._priced_tick = (plan.ts, plan.price)
        self._rows = grid.rows
        self._column = grid.column
        self._computed_at = plan.now_ms
        self._breaker = plan.breaker
        self._sigma, self._sigma_at = plan.sigma, plan.sigma_at
        return True

    def quote(self, cell_id: str, now_ms: int) -> Quote | QuoteRefusal:
        """The locked quote for a bet on `cell_id` at `now_ms`, or why there is none.

        Refusals: `cell_not_placeable` for anything about the cell (malformed id, another
        market, started/locked/too-far column, unpublished row, multiplier under the market
        minimum); `breaker_open` while the breaker is open or before the first price.
        """
        found = self._quotes.get(cell_id)
        if found is None:
            if self._view is None:
                market = self._market
                try:
                    cell = CellId.parse(cell_id)
                except ValueError as e:
                    return QuoteRefusal("cell_not_placeable", f"malformed cell id: {e}")
                if cell.symbol != market.symbol:
                    return QuoteRefusal(
                        "cell_not_placeable", f"cell {cell} is not in market {market.symbol!r}"
                    )
                if self._breaker != "closed":
                    return QuoteRefusal("breaker_open", f"no price yet for {market.symbol}")
                return QuoteRefusal("cell_not_placeable", f"no grid yet for {market.symbol}")
            return self._not_quoted(cell_id, now_ms, self._rows)
        return self._admit(found, now_ms, self._rows)

    def quote_tick(
        self,
        cell_id: str,
        now_ms: int,
        price: int,
        ts: int,
        sigma: float,
        breaker: BreakerStateName,
        *,
        interval_ms: int | None = None,
    ) -> Quote | QuoteRefusal:
        """What `refresh(now_ms, price, ts, sigma, breaker, force=True)` then `quote(cell_id,
        now_ms)` answers — without requoting the whole grid when the tick alone is new.

        Admission's call: the tick (`ts`, `price`) is the newest one, already on every player's
        screen. When the cached grid is priced from it, this is `quote`. When only the tick is
        new — same column, same breaker, same interval, σ younger than `SIGMA_GRACE_REFRESHES`
        × `refresh_ms` — just the asked cell is priced from the tick, with the grid's σ and its
        rows' cached recursions (`tick_touch_probabilities(..., only=...)`), and memoized until
        the tick changes; the book's grid is left as it is. Anything else, or a
        `CELL_REQUOTES_PER_TICK + 1`-th distinct cell of one tick, requotes the whole grid as
        `refresh(force=True)` — keeping the grid's σ while it is within its grace. The answer is
        the same either way, to the basis point and the refusal (tests/test_quote_tick.py
        compares them on every cell).

        Why σ has a grace here: σ falls due every `refresh_ms`, and the market actor renews it on
        the next tick in its worker thread (`actors.market`). Renewing it here would price the
        rows' recursions for the new σ on the event loop, inside a bet (~9 ms), twice a second.
        """
        tick = (ts, price)
        if tick == self._priced_tick:
            return self.quote(cell_id, now_ms)
        view = self._view
        now = max(now_ms, self._computed_at)
        interval = interval_ms or self._interval_ms
        grace = (
            self._sigma_at is not None
            and now - self._sigma_at < SIGMA_GRACE_REFRESHES * self._pricing.refresh_ms
        )
        if (
            view is None
            or not grace
            or interval != view.monitoring_interval_ms
            or current_column(now, self._market.column_ms) != self._column
            or breaker != self._breaker
        ):
            self.refresh(
                now_ms, price, ts, sigma, breaker,
                interval_ms=interval, force=True, keep_sigma=grace,
            )  # fmt: skip
            return self.quote(cell_id, now_ms)
        pending = self._tick_quotes
        if pending is None or pending.tick != tick:
            pending = self._tick_quotes = self._start_tick(tick, now)
        found = pending.quotes.get(cell_id)
        if found is not None:
            return self._admit(found, now_ms, pending.rows)
        known = self._static_ids.get(cell_id)
        if known is None:
            try:
                cell = CellId.parse(cell_id)
            except ValueError:
                return self._not_quoted(cell_id, now_ms, pending.rows)
        else:
            cell = known.cell
        j = cell.col - self._column - 1
        if not (
            cell.symbol == self._market.symbol
            and 0 <= j < len(pending.windows)
            and cell.row in pending.rows
        ):
            return self._not_quoted(cell_id, now_ms, pending.rows)
        if known is None:
            known = self._static.get((cell.col, cell.row)) or self._static_cell(cell.col, cell.row)
        if len(pending.quotes) >= CELL_REQUOTES_PER_TICK:
            self.refresh(
                now_ms, price, ts, sigma, breaker,
                interval_ms=interval, force=True, keep_sigma=True,
            )  # fmt: skip
            return self.quote(cell_id, now_ms)
        market = self._market
        [row_chances] = tick_touch_probabilities(
            price,
            [pending.bands[cell.row - pending.rows.start]],
            self._sigma,
            interval,
            pending.windows,
            self._absorption,
            only=(j,),
        )
        m = multiplier_bps(row_chances[j], market.house_edge_bps, market.max_multiplier_bps)
        found = pending.quotes[cell_id] = known.quote(m, pending.as_of)
        return self._admit(found, now_ms, pending.rows)

    def _start_tick(self, tick: tuple[int, int], now_ms: int) -> _TickQuotes:
        """What `refresh` at `now_ms` would fix for the tick before pricing any cell."""
        market = self._market
        ts, price = tick
        as_of = min(ts, now_ms)
        rows = published_rows(price, market.row_height, market.rows)
        columns = range(self._column + 1, self._column + 1 + market.columns_ahead)
        bands = [(row * market.row_height, (row + 1) * market.row_height) for row in rows]
        windows = [
            (col * market.column_ms - as_of, (col + 1) * market.column_ms - as_of)
            for col in columns
        ]
        return _TickQuotes(tick, as_of, rows, bands, windows)

    def _static_cell(self, col: int, row: int) -> _Static:
        """The cached static parts of cell (`col`, `row`), made (and validated) once."""
        market = self._market
        if len(self._static) >= _STATIC_CELLS_MAX:
            self._static.clear()
            self._static_ids.clear()
        cell = CellId(market.symbol, col, row)
        known = _Static(str(cell), cell, cell_bounds(col, row, market.column_ms, market.row_height))
        self._static[(col, row)] = known
        self._static_ids[known.cell_id] = known
        return known

    def _not_quoted(self, cell_id: str, now_ms: int, rows: range) -> QuoteRefusal:
        """Why a cell that is not on the grid (published `rows`) takes no bet."""
        try:
            cell = CellId.parse(cell_id)
        except ValueError as e:
            return QuoteRefusal("cell_not_placeable", f"malformed cell id: {e}")
        # Not on the snapshot: with no multiplier the grid always finds a reason.
        refusal = unplaceable_reason(cell, self._market, now_ms, rows, None, self._breaker)
        return refusal or QuoteRefusal("cell_not_placeable", f"cell {cell} is not quoted")

    def _admit(self, found: Quote, now_ms: int, rows: range) -> Quote | QuoteRefusal:
        """`found` (a quoted cell of the grid with published `rows`) if it takes a bet at
        `now_ms`, else why not."""
        market = self._market
        # The hot path: a quoted cell has the right symbol and a published row by construction,
        # so only the column (at now), the minimum and the breaker can refuse it. This is
        # `unplaceable_reason` unrolled; the slow path below asks it for the words.
        c = now_ms // market.column_ms
        if (
            c + market.lockout_columns < found.col <= c + market.columns_ahead
            and found.multiplier_bps >= market.min_multiplier_bps
            and self._breaker == "closed"
        ):
            return found
        refusal = unplaceable_reason(
            found.cell, market, now_ms, rows, found.multiplier_bps, self._breaker
        )
        return refusal or QuoteRefusal(
            "cell_not_placeable", f"cell {found.cell_id} is not placeable"
        )
