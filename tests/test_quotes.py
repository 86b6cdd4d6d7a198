"""Pins `tap.quotes.GridBook`: what the grid holds, when it is recomputed, what a bet is quoted."""

from __future__ import annotations

import pytest

from tap.config import MarketConfig, PricingConfig
from tap.grid import CellId, current_column, published_rows, unplaceable_reason
from tap.messages import GridView
from tap.pricing import multiplier_bps, tick_touch_probabilities
from tap.quotes import GridBook, Quote, QuoteRefusal

MARKET = MarketConfig()
PRICING = PricingConfig(refresh_ms=250)
PRICE = 10_012_345
C = 346_458_010
NOW = C * 5_000 + 1_000  # 1 s into column C


def _book(breaker: str = "closed", market: MarketConfig = MARKET) -> tuple[GridBook, GridView]:
    book = GridBook(market, PRICING)
    view = book.refresh(NOW, PRICE, NOW - 40, 0.6, "closed" if breaker == "closed" else "open")
    return book, view


def test_grid_has_every_published_row_of_every_column_ahead() -> None:
    _, view = _book()
    rows = published_rows(PRICE, 1_000, 16)
    assert [c.cell_id for c in view.cells] == [
        f"BTC-USD:{col}:{row}" for col in range(C + 1, C + 13) for row in rows
    ]
    assert (view.symbol, view.price, view.as_of, view.volatility) == (
        "BTC-USD",
        PRICE,
        NOW - 40,
        0.6,
    )
    assert (view.house_edge_bps, view.monitoring_interval_ms, view.breaker) == (500, 250, "closed")
    assert (view.pricing_model, view.next_tick_ms) == ("discrete_ticks", NOW - 40 + 250)


def test_cell_multiplier_is_the_published_formula_priced_as_of_the_tick() -> None:
    """Each cell, priced alone from the published fields, gets the grid's own multiplier."""
    _, view = _book()
    for cell in view.cells:
        [[p]] = tick_touch_probabilities(
            view.price,
            [(cell.price_lo, cell.price_hi)],
            view.volatility,
            view.monitoring_interval_ms,
            [(cell.t_start - view.as_of, cell.t_end - view.as_of)],
        )
        assert cell.multiplier_bps == multiplier_bps(p, 500, 1_000_000)
        assert cell.t_end - cell.t_start == 5_000 and cell.price_hi - cell.price_lo == 1_000


def test_lockout_column_and_likely_cells_are_not_placeable() -> None:
    _, view = _book(market=MarketConfig(min_multiplier_bps=30_000))
    open_columns = [c for c in view.cells if c.t_start >= (C + 2) * 5_000]
    assert not any(c.placeable for c in view.cells if c.t_start == (C + 1) * 5_000)
    assert [c.placeable for c in open_columns] == [c.multiplier_bps >= 30_000 for c in open_columns]
    assert {c.placeable for c in open_columns} == {True, False}  # both kinds are present


def test_breaker_open_makes_no_cell_placeable() -> None:
    _, view = _book("open")
    assert view.breaker == "open"
    assert not any(c.placeable for c in view.cells)


def test_refresh_is_cached_until_refresh_ms_passes() -> None:
    book, view = _book()
    assert book.refresh(NOW + 249, PRICE + 5_000, NOW + 200, 0.9, "closed") is view
    later = book.refresh(NOW + 250, PRICE + 5_000, NOW + 200, 0.9, "closed")
    assert later is not view
    assert later.price == PRICE + 5_000 and later.volatility == 0.9


def test_refresh_recomputes_at_once_on_column_roll_and_breaker_change() -> None:
    book, _ = _book()
    roll = (C + 1) * 5_000
    book.refresh(roll - 100, PRICE, NOW, 0.6, "closed")  # due by time
    before_roll = book.view
    rolled = book.refresh(roll, PRICE, NOW, 0.6, "closed")
    assert rolled is not before_roll
    assert rolled.cells[0].t_start == (C + 2) * 5_000
    opened = book.refresh(roll + 1, PRICE, NOW, 0.6, "open")
    assert opened is not rolled and opened.breaker == "open"
    assert book.refresh(roll + 2, PRICE, NOW, 0.6, "open") is opened


def test_quote_locks_the_cached_multiplier_and_bounds() -> None:
    book, view = _book()
    cell = next(c for c in view.cells if c.placeable)
    q = book.quote(cell.cell_id, NOW + 10)
    assert isinstance(q, Quote)
    assert q.multiplier_bps == cell.multiplier_bps
    assert q.cell == CellId.parse(cell.cell_id) and q.cell_id == cell.cell_id
    assert (q.symbol, q.col, q.row) == (q.cell.symbol, q.cell.col, q.cell.row)
    assert (q.t_start, q.t_end, q.price_lo, q.price_hi) == (
        cell.t_start,
        cell.t_end,
        cell.price_lo,
        cell.price_hi,
    )
    assert q.bounds == q.cell.bounds(MARKET)
    assert q.as_of == view.as_of


def test_quote_keeps_the_cached_price_until_the_next_refresh() -> None:
    book, view = _book()
    cell = next(c for c in view.cells if c.placeable)
    book.refresh(NOW + 100, PRICE + 20_000, NOW + 90, 2.5, "closed")  # not due: still cached
    q = book.quote(cell.cell_id, NOW + 100)
    assert isinstance(q, Quote) and q.multiplier_bps == cell.multiplier_bps


def _refusal(book: GridBook, cell_id: str, now: int) -> QuoteRefusal:
    q = book.quote(cell_id, now)
    assert isinstance(q, QuoteRefusal), q
    return q


@pytest.mark.parametrize(
    ("cell_id", "fragment"),
    [
        ("nonsense", "malformed cell id"),
        (f"BTC-USD:0{C + 3}:10012", "leading zeros"),
        (f"ETH-USD:{C + 3}:10012", "not in market"),
        (f"BTC-USD:{C + 3}:10030", "outside the published rows"),
        (f"BTC-USD:{C + 1}:10012", "locked"),
        (f"BTC-USD:{C}:10012", "already started"),
        (f"BTC-USD:{C + 13}:10012", "more than 12 columns ahead"),
    ],
)
def test_quote_refuses_cells_that_are_not_placeable(cell_id: str, fragment: str) -> None:
    book, _ = _book()
    refusal = _refusal(book, cell_id, NOW)
    assert refusal.code == "cell_not_placeable"
    assert fragment in refusal.message


def test_quote_rechecks_the_column_rule_at_now_even_on_a_cached_grid() -> None:
    book, _ = _book()
    cell_id = f"BTC-USD:{C + 2}:10012"
    assert isinstance(book.quote(cell_id, NOW), Quote)
    # one column later the snapshot still holds the cell, but it is now in the lockout column
    refusal = _refusal(book, cell_id, (C + 1) * 5_000)
    assert refusal.code == "cell_not_placeable" and "locked" in refusal.message


def test_quote_refuses_a_cell_whose_multiplier_is_below_the_minimum() -> None:
    book, view = _book(market=MarketConfig(min_multiplier_bps=30_000))
    cheap = next(
        c for c in view.cells if c.multiplier_bps < 30_000 and c.t_start >= (C + 2) * 5_000
    )
    refusal = _refusal(book, cheap.cell_id, NOW)
    assert refusal.code == "cell_not_placeable" and "below the market minimum" in refusal.message


def test_quote_answers_breaker_open_for_good_cells_while_the_breaker_is_open() -> None:
    book, _ = _book("open")
    assert _refusal(book, f"BTC-USD:{C + 12}:10012", NOW).code == "breaker_open"
    assert _refusal(book, f"BTC-USD:{C + 1}:10012", NOW).code == "cell_not_placeable"


def test_quote_before_any_price_is_breaker_open() -> None:
    book = GridBook(MARKET, PRICING)
    assert book.view is None
    assert _refusal(book, f"BTC-USD:{C + 5}:10012", NOW).code == "breaker_open"
    assert _refusal(book, "junk", NOW).code == "cell_not_placeable"


def test_every_cell_quoted_is_placeable_on_the_grid_and_vice_versa() -> None:
    book, view = _book()
    assert current_column(NOW, 5_000) == C
    for cell in view.cells:
        assert isinstance(book.quote(cell.cell_id, NOW), Quote) == cell.placeable


def test_quote_fast_path_agrees_with_the_grid_rules_at_every_moment_of_two_columns() -> None:
    book, view = _book(market=MarketConfig(min_multiplier_bps=30_000))
    market = book.market
    rows = published_rows(PRICE, market.row_height, market.rows)
    for now in range(NOW, NOW + 10_000, 250):
        for cell in view.cells:
            q = book.quote(cell.cell_id, now)
            why = unplaceable_reason(
                CellId.parse(cell.cell_id), market, now, rows, cell.multiplier_bps, "closed"
            )
            assert isinstance(q, Quote) == (why is None)
            if why is not None:
                assert q == why


def test_refusal_unpacks_as_code_and_message() -> None:
    book, _ = _book()
    code, message = _refusal(book, "nope", NOW)
    assert code == "cell_not_placeable" and "malformed" in message


def test_a_grid_never_rolls_back_to_an_earlier_column() -> None:
    book, _ = _book()
    roll = (C + 1) * 5_000
    rolled = book.refresh(roll, PRICE, NOW, 0.6, "closed")
    # a caller whose clock reads a rounding millisecond behind gets the rolled grid, unchanged
    assert book.refresh(roll - 1, PRICE, NOW, 0.6, "closed") is rolled
    assert rolled.cells[0].t_start == (C + 2) * 5_000


def test_a_forced_requote_prices_the_new_tick_with_the_last_sigma_exactly() -> None:
    """Within refresh_ms a requote takes the new price but keeps σ (so it reuses the recursion);
    what it quotes is exactly what pricing the published fields from scratch gives."""
    book, view = _book()
    moved = book.refresh(NOW + 50, PRICE + 2_345, NOW + 45, 0.9, "closed", force=True)
    assert moved is not view and moved.price == PRICE + 2_345 and moved.as_of == NOW + 45
    assert moved.volatility == view.volatility == 0.6  # σ waits for refresh_ms
    bands = [(c.price_lo, c.price_hi) for c in moved.cells[:16]]
    windows = [(c.t_start - moved.as_of, c.t_end - moved.as_of) for c in moved.cells[::16]]
    fresh = tick_touch_probabilities(moved.price, bands, 0.6, 250, windows)
    for k, cell in enumerate(moved.cells):
        assert cell.multiplier_bps == multiplier_bps(fresh[k % 16][k // 16], 500, 1_000_000)
    later = book.refresh(NOW + 300, PRICE + 2_345, NOW + 295, 0.9, "closed", force=True)
    assert later.volatility == 0.9  # refresh_ms (250 here) passed: σ is taken anew


def test_a_grid_planned_earlier_never_replaces_a_newer_one() -> None:
    """The market actor prices a grid in a thread while admission may install a newer one
    (`quote_tick`'s full requote): the older result is dropped, and the book keeps quoting
    from the newer tick."""
    t0 = C * 5_000 + 1_000
    book = GridBook(MarketConfig(), PricingConfig(refresh_ms=500))
    book.refresh(t0, PRICE, t0, 0.6, "closed")
    older = book.plan(t0 + 100, PRICE + 2_000, t0 + 100, 0.6, "closed", force=True)
    newer = book.plan(t0 + 200, PRICE + 4_000, t0 + 200, 0.6, "closed", force=True)
    assert older is not None and newer is not None
    slow = book.compute(older)  # "in the thread"
    assert book.install(book.compute(newer))
    assert not book.install(slow)
    assert book.priced_tick == (t0 + 200, PRICE + 4_000)
    view = book.view
    assert view is not None and view.price == PRICE + 4_000
    # Same time, an older tick: dropped too.
    same_time_older = book.plan(t0 + 200, PRICE, t0 + 150, 0.6, "closed", force=True)
    assert same_time_older is not None
    assert not book.install(book.compute(same_time_older))
    assert book.priced_tick == (t0 + 200, PRICE + 4_000)


def test_plan_and_compute_give_what_refresh_gives() -> None:
    t0 = C * 5_000 + 1_000
    a = GridBook(MarketConfig(), PricingConfig(refresh_ms=500))
    b = GridBook(MarketConfig(), PricingConfig(refresh_ms=500))
    for book in (a, b):
        book.refresh(t0, PRICE, t0, 0.6, "closed")
    a.refresh(t0 + 250, PRICE + 700, t0 + 250, 0.7, "closed", force=True)
    plan = b.plan(t0 + 250, PRICE + 700, t0 + 250, 0.7, "closed", force=True)
    assert plan is not None and plan.sigma == 0.6  # σ is not due yet: the grid's is kept
    assert b.install(b.compute(plan))
    assert a.view == b.view and a.priced_tick == b.priced_tick
    assert b.plan(t0 + 300, PRICE + 700, t0 + 250, 0.7, "closed") is None  # nothing due
