"""The cached quote grid of one market: the grid everyone sees and the quotes bets are admitted on.

Decides when a market's grid is recomputed (at most every `pricing.refresh_ms`, and at once when
the column rolls or the breaker changes), what each cell's multiplier and placeability are, and
what a bet on a cell id is quoted: the locked multiplier and the cell's bounds, or the API.md
refusal. Admission uses the cached quote, not a fresh price (DESIGN rule 10), so what a player
saw on the last published grid is what a bet locks. It leaves to its caller the price, its
timestamp, σ and the breaker state, when to call `refresh` and what to publish; `now_ms` is an
argument everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from tap.config import MarketConfig, PricingConfig
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
from tap.pricing import multiplier_bps, touch_probability

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
        "_breaker",
        "_column",
        "_computed_at",
        "_market",
        "_pricing",
        "_quotes",
        "_rows",
        "_view",
    )

    def __init__(self, market: MarketConfig, pricing: PricingConfig) -> None:
        self._market = market
        self._pricing = pricing
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

    def refresh(
        self, now_ms: int, price: int, ts: int, sigma: float, breaker: BreakerStateName
    ) -> GridView:
        """The grid at `now_ms` for the latest tick (`ts`, `price`) and volatility `sigma`.

        Recomputed only when `is_due`; otherwise the cached view is returned unchanged (a new
        price alone waits for `refresh_ms`). The grid is priced as of the tick's time, not
        `now_ms` (`as_of = min(ts, now_ms)`): `price` is known exactly at `ts`, so anyone can
        check a quote against the tick log. How far `ts` trails `now_ms` is bounded elsewhere:
        the grid refreshes on ticks, and a stale feed opens the breaker.
        """
        # A book's time never runs backwards: callers' clocks may disagree by a rounding
        # millisecond, and a grid must not roll back to the column it just left.
        now_ms = max(now_ms, self._computed_at)
        if self._view is not None and not self.is_due(now_ms, breaker):
            return self._view
        market = self._market
        edge, cap = market.house_edge_bps, market.max_multiplier_bps
        monitoring_ms = self._pricing.monitoring_interval_ms
        as_of = min(ts, now_ms)
        column = current_column(now_ms, market.column_ms)
        rows = published_rows(price, market.row_height, market.rows)
        cells: list[GridCell] = []
        quotes: dict[str, Quote] = {}
        for col in range(column + 1, column + 1 + market.columns_ahead):
            t_start = col * market.column_ms
            t0 = max(0, t_start - as_of)
            t1 = t_start + market.column_ms - as_of
            for row in rows:
                cell = CellId(market.symbol, col, row)
                cell_id = str(cell)
                bounds = cell_bounds(col, row, market.column_ms, market.row_height)
                p = touch_probability(
                    price, bounds.price_lo, bounds.price_hi, sigma, t0, t1,
                    monitoring_ms=monitoring_ms,
                )  # fmt: skip
                m = multiplier_bps(p, edge, cap)
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
            monitoring_interval_ms=monitoring_ms,
            breaker=breaker,
            cells=cells,
        )
        self._quotes = quotes
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
