"""The cached quote grid of one market: the grid everyone sees and the quotes bets are admitted on.

Decides when a market's grid is recomputed (at most every `pricing.refresh_ms`, at once when the
column rolls or the breaker changes, and whenever the caller forces it), what each cell's
multiplier and placeability are — priced for the win rule actually used, a tick in the band
(`tap.pricing.tick_touch_probabilities`) — and what a bet on a cell id is quoted: the locked
multiplier and the cell's bounds, or the API.md refusal. Admission uses the cached quote (DESIGN
rule 10); the market actor forces a requote before admitting on a grid older than the newest
tick, so no bet is ever quoted on a price a player has already seen move (docs/pricing.md,
"quote age"). It leaves to its caller the price, its timestamp, σ, the tick interval and the
breaker state, when to call `refresh` and what to publish; `now_ms` is an argument everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Quote:
    """What a bet on a cell locks: its geometry and the multiplier priced at `as_of`.

    Flat, so the edge copies the fields straight into `PlaceBet`. One `Quote` object per cell is
    shared by every bet on that snapshot: it is frozen.
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


class GridBook:
    """One market's current grid snapshot and the quotes behind it.

    `refresh` rebuilds the snapshot when it is due and otherwise returns the cached `GridView`
    object itself, so a caller can tell "new grid" with `is`. The view is shared, not copied:
    treat it as read-only. `quote` is a dict lookup plus integer comparisons — it runs for every
    bet — and re-checks the column rule against the `now_ms` it is given, because a snapshot up to
    `refresh_ms` old may straddle a column roll.
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
        the grid refreshes on ticks, and a stale feed opens the breaker.
        """
        # A book's time never runs backwards: callers' clocks may disagree by a rounding
        # millisecond, and a grid must not roll back to the column it just left.
        now_ms = max(now_ms, self._computed_at)
        if self._view is not None and not force and not self.is_due(now_ms, breaker):
            return self._view
        market = self._market
        edge, cap = market.house_edge_bps, market.max_multiplier_bps
        interval = interval_ms or self._interval_ms
        if (
            self._view is None
            or self._sigma_at is None
            or now_ms - self._sigma_at >= self._pricing.refresh_ms
            or interval != self._view.monitoring_interval_ms
        ):
            self._sigma, self._sigma_at = sigma, now_ms
        sigma = self._sigma
        as_of = min(ts, now_ms)
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
        for j, col in enumerate(columns):
            for i, row in enumerate(rows):
                cell = CellId(market.symbol, col, row)
                cell_id = str(cell)
                bounds = cell_bounds(col, row, market.column_ms, market.row_height)
                m = multiplier_bps(chances[i][j], edge, cap)
                refusal = unplaceable_reason(cell, market, now_ms, rows, m, breaker)
                cells.append(
                    GridCell(
                        cell_id=cell_id,
                        t_start=bounds.t_start,
                        t_end=bounds.t_end,
                        price_lo=bounds.price_lo,
                        price_hi=bounds.price_hi,
                        multiplier_bps=m,
                        placeable=refusal is None,
                    )
                )
                quotes[cell_id] = Quote(
                    cell_id=cell_id,
                    symbol=market.symbol,
                    col=col,
                    row=row,
                    t_start=bounds.t_start,
                    t_end=bounds.t_end,
                    price_lo=bounds.price_lo,
                    price_hi=bounds.price_hi,
                    multiplier_bps=m,
                    as_of=as_of,
                )
        self._view = GridView(
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
        self._quotes = quotes
        self._priced_tick = (ts, price)
        self._rows = rows
        self._column = column
        self._computed_at = now_ms
        self._breaker = breaker
        return self._view

    def quote(self, cell_id: str, now_ms: int) -> Quote | QuoteRefusal:
        """The locked quote for a bet on `cell_id` at `now_ms`, or why there is none.

        Refusals: `cell_not_placeable` for anything about the cell (malformed id, another
        market, started/locked/too-far column, unpublished row, multiplier under the market
        minimum); `breaker_open` while the breaker is open or before the first price.
        """
        market = self._market
        found = self._quotes.get(cell_id)
        if found is None:
            try:
                cell = CellId.parse(cell_id)
            except ValueError as e:
                return QuoteRefusal("cell_not_placeable", f"malformed cell id: {e}")
            if self._view is None:
                if cell.symbol != market.symbol:
                    return QuoteRefusal(
                        "cell_not_placeable", f"cell {cell} is not in market {market.symbol!r}"
                    )
                if self._breaker != "closed":
                    return QuoteRefusal("breaker_open", f"no price yet for {market.symbol}")
                return QuoteRefusal("cell_not_placeable", f"no grid yet for {market.symbol}")
            # Not on the snapshot: with no multiplier the grid always finds a reason.
            refusal = unplaceable_reason(cell, market, now_ms, self._rows, None, self._breaker)
            return refusal or QuoteRefusal("cell_not_placeable", f"cell {cell} is not quoted")
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
            found.cell, market, now_ms, self._rows, found.multiplier_bps, self._breaker
        )
        return refusal or QuoteRefusal("cell_not_placeable", f"cell {cell_id} is not placeable")
