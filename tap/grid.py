"""Grid geometry: what a cell id names, which cells are published or placeable, what ticks touch.

Decides, per API.md "Grid and cells": the canonical cell id `"{symbol}:{col}:{row}"` and its
parse, a cell's absolute time window and price band, the current column, the published rows
and columns, why a cell is not placeable (or that it is), and whether a tick touches a band.
Leaves to its caller the prices and multipliers (`tap.pricing`), caching (`tap.quotes`) and
every clock: `now_ms` is an argument.

Integers only: times in ms since the epoch, prices in increments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from tap.config import MarketConfig
from tap.messages import BreakerStateName

# A symbol is a short exchange-style name; digits are at most 15 so every derived time and price
# (col * column_ms, row * row_height) fits SQLite's 64-bit INTEGER.
_SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_INDEX = re.compile(r"0|[1-9][0-9]{0,14}")

RefusalCode = Literal["cell_not_placeable", "breaker_open"]


@dataclass(frozen=True, slots=True)
class CellId:
    """One cell, absolute and stable: column `col` of `column_ms`, row `row` of `row_height`.

    The text form is canonical — no sign, no leading zeros, no spaces — so one cell has exactly
    one id. That matters for money: the ledger's `UNIQUE(address, cell_id)` compares strings, and
    `"X:0346:10"` must not be a second way to bet on `"X:346:10"`. Constructing a `CellId`
    directly is validated the same way, so `CellId.parse(str(c)) == c` always holds.
    """

    symbol: str
    col: int
    row: int

    def __post_init__(self) -> None:
        _check_symbol(self.symbol)
        for name, value in (("col", self.col), ("row", self.row)):
            if type(value) is not int:
                raise ValueError(f"{name} must be an int, got {value!r}")
            if not 0 <= value < 10**15:
                raise ValueError(f"{name} must be in 0..999999999999999, got {value}")

    @classmethod
    def parse(cls, text: str) -> CellId:
        """Parse `"{symbol}:{col}:{row}"`; `ValueError` says what is wrong with anything else."""
        if not isinstance(text, str):
            raise ValueError(f"cell id must be a string, got {type(text).__name__}")
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(
                f"cell id {text[:80]!r} must have three ':'-separated parts (symbol:col:row), "
                f"found {len(parts)}"
            )
        symbol, col, row = parts
        _check_symbol(symbol)
        for name, part in (("col", col), ("row", row)):
            if not _INDEX.fullmatch(part):
                raise ValueError(
                    f"cell id {name} {part[:20]!r} must be a non-negative decimal integer "
                    "without sign or leading zeros (at most 15 digits)"
                )
        return cls(symbol, int(col), int(row))

    def __str__(self) -> str:
        return f"{self.symbol}:{self.col}:{self.row}"

    def bounds(self, market: MarketConfig) -> CellBounds:
        return cell_bounds(self.col, self.row, market.column_ms, market.row_height)


def _check_symbol(symbol: str) -> None:
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
        raise ValueError(
            f"cell id symbol {str(symbol)[:40]!r} must be 1-32 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )


@dataclass(frozen=True, slots=True)
class CellBounds:
    """A cell's window `[t_start, t_end)` (ms) and its closed band `[price_lo, price_hi]`."""

    t_start: int
    t_end: int
    price_lo: int
    price_hi: int


def cell_bounds(col: int, row: int, column_ms: int, row_height: int) -> CellBounds:
    t_start = col * column_ms
    price_lo = row * row_height
    return CellBounds(t_start, t_start + column_ms, price_lo, price_lo + row_height)


def current_column(now_ms: int, column_ms: int) -> int:
    """The column whose window contains `now_ms`: `c = now // column_ms`."""
    return now_ms // column_ms


def published_rows(price: int, row_height: int, rows: int) -> range:
    """The `rows` rows of the published grid, centred on `price`.

    The centre row is the one whose band starts at or below the price, `price // row_height`;
    the grid runs from `centre − rows // 2` up to `centre − rows // 2 + rows − 1` (with 16 rows:
    8 below the centre row, the centre row, 7 above). Row indices never go below 0 (no band
    below price 0); near zero the window is shifted up rather than shortened.
    """
    first = max(0, price // row_height - rows // 2)
    return range(first, first + rows)


def published_columns(now_ms: int, market: MarketConfig) -> range:
    """Columns shown on the grid: the `columns_ahead` columns after the current one."""
    c = current_column(now_ms, market.column_ms)
    return range(c + 1, c + 1 + market.columns_ahead)


def placeable_columns(now_ms: int, market: MarketConfig) -> range:
    """Columns that take bets: `c + 1 + lockout_columns <= col <= c + columns_ahead`."""
    c = current_column(now_ms, market.column_ms)
    return range(c + 1 + market.lockout_columns, c + 1 + market.columns_ahead)


class NotPlaceable(NamedTuple):
    """Why a cell takes no bet now: the API.md error code and a sentence for the player.

    A named tuple, so a caller may unpack it as `(code, message)`.
    """

    code: RefusalCode
    message: str


BREAKER_OPEN = NotPlaceable("breaker_open", "betting is paused: the circuit breaker is open")


def unplaceable_reason(
    cell: CellId,
    market: MarketConfig,
    now_ms: int,
    rows: range,
    multiplier_bps: int | None,
    breaker: BreakerStateName,
) -> NotPlaceable | None:
    """None when `cell` may take a bet at `now_ms`, else the first reason it may not.

    `rows` is the published row range the cell was quoted on; `multiplier_bps` its quoted
    multiplier (None: not quoted). Checks run from the cell's own properties to the market's
    state — symbol, column, row, multiplier, then the breaker — so a cell that could never be
    bet on says so (`cell_not_placeable`), and a good cell during a pause answers `breaker_open`,
    which a client may retry.
    """
    if cell.symbol != market.symbol:
        return NotPlaceable("cell_not_placeable", f"cell {cell} is not in market {market.symbol!r}")
    c = current_column(now_ms, market.column_ms)
    if cell.col <= c:
        return NotPlaceable(
            "cell_not_placeable",
            f"column {cell.col} has already started (the current column is {c})",
        )
    if cell.col <= c + market.lockout_columns:
        return NotPlaceable(
            "cell_not_placeable",
            f"column {cell.col} is locked: bets close {market.lockout_columns} column(s) "
            f"before a window starts (the current column is {c})",
        )
    if cell.col > c + market.columns_ahead:
        return NotPlaceable(
            "cell_not_placeable",
            f"column {cell.col} is more than {market.columns_ahead} columns ahead "
            f"(the current column is {c})",
        )
    if cell.row not in rows:
        return NotPlaceable(
            "cell_not_placeable",
            f"row {cell.row} is outside the published rows {rows.start}..{rows.stop - 1}",
        )
    if multiplier_bps is None:
        return NotPlaceable("cell_not_placeable", f"cell {cell} has no quote on the current grid")
    if multiplier_bps < market.min_multiplier_bps:
        return NotPlaceable(
            "cell_not_placeable",
            f"multiplier {multiplier_bps} bps is below the market minimum "
            f"{market.min_multiplier_bps} bps: the cell is too likely to be touched",
        )
    if breaker != "closed":
        return BREAKER_OPEN
    return None


def touches(bounds: CellBounds, ts: int, price: int) -> bool:
    """Does a tick at (`ts`, `price`) touch the cell? Half-open window, closed band (API.md)."""
    return bounds.t_start <= ts < bounds.t_end and bounds.price_lo <= price <= bounds.price_hi


def rows_touched(price: int, row_height: int) -> tuple[int, ...]:
    """The rows whose closed band contains `price`: one row, or two when it sits on a line.

    A price exactly on `row * row_height` is the top edge of row − 1 and the bottom edge of row,
    and a touch of the line counts for both. Row −1 does not exist, so price 0 touches row 0 only.
    """
    row, offset = divmod(price, row_height)
    if offset == 0 and row > 0:
        return (row - 1, row)
    return (row,)
