"""Pins `tap.grid`: cell ids, bounds, published rows and columns, placeability, touches."""

from __future__ import annotations

import pytest

from tap.config import MarketConfig
from tap.grid import (
    BREAKER_OPEN,
    CellBounds,
    CellId,
    cell_bounds,
    current_column,
    placeable_columns,
    published_columns,
    published_rows,
    rows_touched,
    touches,
    unplaceable_reason,
)

MARKET = MarketConfig()  # BTC-USD, 5000 ms columns, 1000-increment rows, 12 ahead, 16 rows
NOW = 346_458_010 * 5_000 + 1_234  # inside column 346458010


def test_cell_id_round_trips_through_its_text() -> None:
    cell = CellId.parse("BTC-USD:346458012:10012")
    assert cell == CellId("BTC-USD", 346_458_012, 10_012)
    assert str(cell) == "BTC-USD:346458012:10012"
    assert CellId.parse("X:0:0") == CellId("X", 0, 0)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("BTC-USD:1", "three ':'-separated parts"),
        ("BTC-USD:1:2:3", "found 4"),
        ("", "found 1"),
        (":1:2", "symbol"),
        ("BTC USD:1:2", "symbol"),
        ("BTC-USD:x:2", "col"),
        ("BTC-USD:1:2.0", "row"),
        ("BTC-USD:-1:2", "col"),
        ("BTC-USD:1:-2", "row"),
        ("BTC-USD:+1:2", "col"),
        ("BTC-USD: 1:2", "col"),
        ("BTC-USD:01:2", "leading zeros"),  # a second spelling would dodge UNIQUE(address, cell_id)
        ("BTC-USD:1:٣", "row"),  # int() would accept Arabic-Indic digits; the id must not
        ("BTC-USD:1:1_000", "row"),
        ("BTC-USD:1234567890123456:2", "15 digits"),
    ],
)
def test_malformed_cell_ids_are_refused_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CellId.parse(text)


def test_cell_id_constructor_validates_like_parse() -> None:
    with pytest.raises(ValueError, match="col"):
        CellId("BTC-USD", -1, 3)
    with pytest.raises(ValueError, match="symbol"):
        CellId("A:B", 1, 3)
    with pytest.raises(ValueError, match="int"):
        CellId("BTC-USD", True, 3)


def test_cell_bounds_follow_the_published_geometry() -> None:
    bounds = CellId.parse("BTC-USD:346458012:10012").bounds(MARKET)
    assert bounds == CellBounds(
        t_start=346_458_012 * 5_000,
        t_end=346_458_013 * 5_000,
        price_lo=10_012_000,
        price_hi=10_013_000,
    )
    assert cell_bounds(2, 3, 100, 7) == CellBounds(200, 300, 21, 28)


def test_current_column_is_floor_division() -> None:
    assert current_column(0, 5_000) == 0
    assert current_column(4_999, 5_000) == 0
    assert current_column(5_000, 5_000) == 1


def test_published_rows_are_centred_on_the_price_row() -> None:
    rows = published_rows(10_012_345, 1_000, 16)
    assert rows == range(10_004, 10_020)  # centre 10012: 8 rows below it, itself, 7 above
    assert 10_012 in rows and len(rows) == 16
    assert published_rows(10_012_000, 1_000, 3) == range(10_011, 10_014)


def test_published_rows_never_go_below_zero() -> None:
    assert published_rows(2_500, 1_000, 16) == range(0, 16)


def test_published_and_placeable_columns() -> None:
    c = current_column(NOW, MARKET.column_ms)
    assert published_columns(NOW, MARKET) == range(c + 1, c + 13)
    assert placeable_columns(NOW, MARKET) == range(c + 2, c + 13)  # lockout 1
    no_lockout = MarketConfig(lockout_columns=0, columns_ahead=3)
    assert placeable_columns(NOW, no_lockout) == range(c + 1, c + 4)


def _why(
    col: int,
    row: int = 10_012,
    *,
    multiplier: int | None = 20_000,
    breaker: str = "closed",
    symbol: str = "BTC-USD",
) -> str | None:
    rows = published_rows(10_012_345, MARKET.row_height, MARKET.rows)
    reason = unplaceable_reason(
        CellId(symbol, col, row),
        MARKET,
        NOW,
        rows,
        multiplier,
        "closed" if breaker == "closed" else "open",
    )
    return None if reason is None else f"{reason.code}: {reason.message}"


def test_placeable_window_is_exactly_lockout_to_columns_ahead() -> None:
    c = current_column(NOW, MARKET.column_ms)
    assert _why(c + 2) is None
    assert _why(c + 12) is None
    assert "already started" in (_why(c) or "")
    assert "already started" in (_why(c - 5) or "")
    assert "locked" in (_why(c + 1) or "")
    assert "more than 12 columns ahead" in (_why(c + 13) or "")


def test_unplaceable_reasons_name_row_multiplier_market_and_breaker() -> None:
    c = current_column(NOW, MARKET.column_ms)
    assert _why(c + 3, 10_003) == (
        "cell_not_placeable: row 10003 is outside the published rows 10004..10019"
    )
    assert _why(c + 3, 10_020) is not None
    assert _why(c + 3, 10_019) is None
    assert "below the market minimum 10500" in (_why(c + 3, multiplier=10_499) or "")
    assert _why(c + 3, multiplier=10_500) is None
    assert "no quote" in (_why(c + 3, multiplier=None) or "")
    assert "not in market" in (_why(c + 3, symbol="ETH-USD") or "")
    assert _why(c + 3, breaker="open") == f"{BREAKER_OPEN.code}: {BREAKER_OPEN.message}"


def test_a_cell_that_can_never_be_bet_on_says_so_even_while_the_breaker_is_open() -> None:
    c = current_column(NOW, MARKET.column_ms)
    assert (_why(c + 1, breaker="open") or "").startswith("cell_not_placeable")
    assert (_why(c + 3, breaker="open") or "").startswith("breaker_open")


def test_touch_is_a_half_open_window_and_a_closed_band() -> None:
    b = CellBounds(t_start=10_000, t_end=15_000, price_lo=2_000, price_hi=3_000)
    assert touches(b, 10_000, 2_500)
    assert touches(b, 14_999, 2_000)  # lower line
    assert touches(b, 12_000, 3_000)  # upper line
    assert not touches(b, 15_000, 2_500)  # t_end belongs to the next column
    assert not touches(b, 9_999, 2_500)
    assert not touches(b, 12_000, 1_999)
    assert not touches(b, 12_000, 3_001)


def test_a_price_on_a_line_touches_both_rows() -> None:
    assert rows_touched(10_012_000, 1_000) == (10_011, 10_012)
    assert rows_touched(10_012_001, 1_000) == (10_012,)
    assert rows_touched(10_012_999, 1_000) == (10_012,)
    assert rows_touched(0, 1_000) == (0,)
    for price in (10_011_999, 10_012_000, 10_012_001):
        for row in rows_touched(price, 1_000):
            assert touches(cell_bounds(0, row, 5_000, 1_000), 0, price)
