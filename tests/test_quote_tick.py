"""Pins `GridBook.quote_tick`: admission's quote from a tick newer than the cached grid.

Whatever path it takes — the asked cell alone from the new tick, or the whole grid requoted —
its answer must be exactly `refresh(..., force=True)` then `quote(...)` from the same state: the
same multiplier to the basis point, the same bounds and as_of, the same refusal. The reference
is a deep copy of the book, so both start from one state (σ, cached recursions, column, clock).
"""

from __future__ import annotations

import copy
import random

import pytest

import tap.quotes
from tap.config import MarketConfig, PricingConfig
from tap.messages import BreakerStateName
from tap.pricing import AbsorptionCache, tick_touch_probabilities
from tap.quotes import CELL_REQUOTES_PER_TICK, SIGMA_GRACE_REFRESHES, GridBook, Quote, QuoteRefusal

C = 346_458_010
COLUMN_START = C * 5_000
PRICE = 10_012_345
SIGMA = 0.6
# Enough placeable and refused cells alike: the minimum refuses the cells nearest the price.
MARKET = MarketConfig(min_multiplier_bps=30_000)
REFRESH_MS = 500


def _book(
    interval_ms: int, now: int, price: int = PRICE, market: MarketConfig = MARKET
) -> GridBook:
    book = GridBook(market, PricingConfig(refresh_ms=REFRESH_MS), interval_ms)
    book.refresh(now, price, now - 30, SIGMA, "closed")
    return book


def _reference(
    book: GridBook,
    now: int,
    price: int,
    ts: int,
    sigma: float,
    breaker: BreakerStateName,
    interval_ms: int | None = None,
) -> GridBook:
    """The same book after today's full forced requote from the tick."""
    ref = copy.deepcopy(book)
    ref.refresh(now, price, ts, sigma, breaker, interval_ms=interval_ms, force=True)
    return ref


def _asked(book: GridBook, ref: GridBook) -> list[str]:
    """Every cell of the old and the new grid, and ids that are on neither."""
    old, new = book.view, ref.view
    assert old is not None and new is not None
    ids = {c.cell_id for c in old.cells} | {c.cell_id for c in new.cells}
    return [
        *sorted(ids),
        f"BTC-USD:{C}:{PRICE // 1_000}",  # the current column
        f"BTC-USD:{C + 13}:{PRICE // 1_000}",  # beyond the columns ahead
        f"BTC-USD:{C + 3}:{PRICE // 1_000 + 40}",  # far outside the rows
        f"ETH-USD:{C + 3}:{PRICE // 1_000}",  # another market
        f"BTC-USD:0{C + 3}:{PRICE // 1_000}",  # not canonical
        "BTC-USD:x:1",
        "",
    ]


def _same(got: Quote | QuoteRefusal, want: Quote | QuoteRefusal) -> None:
    assert type(got) is type(want)
    assert got == want


@pytest.mark.parametrize("interval_ms", [250, 300, 40])
def test_a_cell_requoted_alone_is_the_full_requote_s_cell_on_random_ticks(
    interval_ms: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell, over random ticks: moves within a row and across several (a moved row set),
    the lockout column, cells under the minimum; 300 ms ticks give windows of 16 and 17 ticks
    (the per-cell pricing must shape the recursion as the whole grid does)."""
    monkeypatch.setattr(tap.quotes, "CELL_REQUOTES_PER_TICK", 10**6)  # no fallback here
    rng = random.Random(20_261_203 + interval_ms)
    per_cell = 0
    for _ in range(6):
        grid_at = COLUMN_START + rng.randint(0, 4_000)
        book = _book(interval_ms, grid_at, PRICE + rng.randint(-5_000, 5_000))
        view = book.view
        assert view is not None
        for _ in range(2):  # two newer ticks in a row on one book: the memo moves on
            price = view.price + rng.choice([rng.randint(-900, 900), rng.randint(-4_000, 4_000)])
            now = min(grid_at + rng.randint(1, REFRESH_MS - 1), COLUMN_START + 4_999)
            ts = now - rng.randint(0, 40)
            ref = _reference(book, now, price, ts, 0.9, "closed")
            for cell_id in _asked(book, ref):
                got = book.quote_tick(cell_id, now, price, ts, 0.9, "closed")
                _same(got, ref.quote(cell_id, now))
                per_cell += isinstance(got, Quote)
            assert book.view is view  # priced cell by cell: the grid itself was not requoted
            assert book.priced_tick == (view.as_of, view.price)
    assert per_cell > 6 * 2 * 150  # the comparison did cover priced cells


def test_a_moved_row_set_quotes_the_new_rows_and_refuses_the_old() -> None:
    book = _book(250, COLUMN_START + 1_000)
    moved = PRICE + 3_000  # three rows up
    now = COLUMN_START + 1_200
    ref = _reference(book, now, moved, now, SIGMA, "closed")
    new_row = f"BTC-USD:{C + 4}:{moved // 1_000 + 7}"  # on the new grid only
    old_row = f"BTC-USD:{C + 4}:{PRICE // 1_000 - 8}"  # on the old grid only
    got = book.quote_tick(new_row, now, moved, now, SIGMA, "closed")
    assert isinstance(got, Quote) and got.as_of == now
    _same(got, ref.quote(new_row, now))
    refused = book.quote_tick(old_row, now, moved, now, SIGMA, "closed")
    assert isinstance(refused, QuoteRefusal) and "outside the published rows" in refused.message
    _same(refused, ref.quote(old_row, now))
    assert book.priced_tick == (COLUMN_START + 970, PRICE)  # no full requote


def test_a_new_tick_is_priced_from_its_own_price_not_the_memo_of_the_last() -> None:
    book = _book(250, COLUMN_START + 1_000)
    cell_id = f"BTC-USD:{C + 8}:{PRICE // 1_000 + 3}"
    first = book.quote_tick(
        cell_id, COLUMN_START + 1_100, PRICE + 800, COLUMN_START + 1_100, SIGMA, "closed"
    )
    now = COLUMN_START + 1_350
    ref = _reference(book, now, PRICE + 1_900, now, SIGMA, "closed")
    second = book.quote_tick(cell_id, now, PRICE + 1_900, now, SIGMA, "closed")
    _same(second, ref.quote(cell_id, now))
    assert isinstance(first, Quote) and isinstance(second, Quote)
    assert second.multiplier_bps < first.multiplier_bps and second.as_of == now


def _fell_back(book: GridBook, price: int, ts: int) -> bool:
    view = book.view
    return book.priced_tick == (ts, price) and view is not None and view.price == price


@pytest.mark.parametrize(
    ("case", "now", "breaker", "sigma", "interval_ms"),
    [
        ("column roll", COLUMN_START + 5_000 + 20, "closed", 0.9, None),
        ("breaker opened", COLUMN_START + 1_200, "open", 0.9, None),
        ("sigma past its grace", COLUMN_START + 1_000 + 2 * REFRESH_MS, "closed", 0.9, None),
        ("new interval", COLUMN_START + 1_200, "closed", 0.9, 200),
    ],
)
def test_a_due_full_requote_is_done_as_before(
    case: str, now: int, breaker: BreakerStateName, sigma: float, interval_ms: int | None
) -> None:
    book = _book(250, COLUMN_START + 1_000)
    price, ts = PRICE + 2_100, now - 10
    ref = _reference(book, now, price, ts, sigma, breaker, interval_ms)
    asked = _asked(book, ref)
    for cell_id in asked:
        got = book.quote_tick(cell_id, now, price, ts, sigma, breaker, interval_ms=interval_ms)
        _same(got, ref.quote(cell_id, now))
        assert _fell_back(book, price, ts), case  # the first ask requoted the whole grid
    assert book.view == ref.view
    if case in ("sigma past its grace", "new interval"):
        assert book.view is not None and book.view.volatility == sigma


@pytest.mark.parametrize("late_ms", [0, 1, REFRESH_MS // 2, REFRESH_MS - 1])
def test_a_due_sigma_within_its_grace_is_kept_and_the_cell_priced_alone(late_ms: int) -> None:
    """σ fell due (`refresh_ms` since it was taken) but is within `SIGMA_GRACE_REFRESHES`: the
    cell alone is priced with the grid's σ — the market actor's thread renews σ on the next
    tick — and is exactly the cell of a full requote that keeps σ."""
    assert SIGMA_GRACE_REFRESHES == 2
    book = _book(250, COLUMN_START + 1_000)
    view = book.view
    now = COLUMN_START + 1_000 + REFRESH_MS + late_ms
    price, ts = PRICE + 2_100, now - 10
    ref = copy.deepcopy(book)
    ref.refresh(now, price, ts, 0.9, "closed", force=True, keep_sigma=True)
    assert ref.view is not None and ref.view.volatility == SIGMA
    for cell_id in _asked(book, ref)[:CELL_REQUOTES_PER_TICK]:
        _same(book.quote_tick(cell_id, now, price, ts, 0.9, "closed"), ref.quote(cell_id, now))
    assert book.view is view  # no full requote on the way
    # The cell past the limit requotes the whole grid, and still keeps σ.
    for cell_id in _asked(book, ref):
        _same(book.quote_tick(cell_id, now, price, ts, 0.9, "closed"), ref.quote(cell_id, now))
    assert book.view == ref.view
    # A full requote from the next tick that does not keep σ (the market actor's) renews it.
    plan = book.plan(now + 250, price, ts + 250, 0.9, "closed", force=True)
    assert plan is not None and plan.sigma == 0.9


def test_after_k_distinct_cells_of_one_tick_the_whole_grid_is_requoted() -> None:
    book = _book(250, COLUMN_START + 1_000)
    view = book.view
    assert view is not None
    now, price = COLUMN_START + 1_200, PRICE - 1_300
    ref = _reference(book, now, price, now, SIGMA, "closed")
    cells = [c.cell_id for c in ref.view.cells if c.placeable] if ref.view else []
    assert len(cells) > CELL_REQUOTES_PER_TICK + 1
    for k, cell_id in enumerate(cells[:CELL_REQUOTES_PER_TICK]):
        for _ in range(3):  # asking again is the memo: it does not count
            _same(
                book.quote_tick(cell_id, now, price, now, SIGMA, "closed"), ref.quote(cell_id, now)
            )
        assert book.view is view, k
    # Unpriced refusals cost nothing and do not count either.
    book.quote_tick(f"BTC-USD:{C}:1", now, price, now, SIGMA, "closed")
    assert book.view is view
    nth = cells[CELL_REQUOTES_PER_TICK]
    _same(book.quote_tick(nth, now, price, now, SIGMA, "closed"), ref.quote(nth, now))
    assert _fell_back(book, price, now) and book.view == ref.view
    for cell_id in cells:  # and from then on the quotes are the new grid's
        _same(book.quote_tick(cell_id, now, price, now, SIGMA, "closed"), ref.quote(cell_id, now))


def test_the_tick_the_grid_is_priced_from_is_quoted_from_the_grid() -> None:
    book = _book(250, COLUMN_START + 1_000)
    cell_id = f"BTC-USD:{C + 8}:{PRICE // 1_000 + 3}"
    cached = book.quote(cell_id, COLUMN_START + 1_100)
    got = book.quote_tick(cell_id, COLUMN_START + 1_100, PRICE, COLUMN_START + 970, 0.9, "closed")
    assert got is cached


def test_the_full_grid_keeps_its_cells_static_parts_bounded() -> None:
    """The id, CellId and bounds of a cell are made once and reused, and the cache is bounded."""
    book = _book(250, COLUMN_START + 1_000)
    view = book.view
    assert view is not None
    again = book.refresh(
        COLUMN_START + 1_100, PRICE + 10, COLUMN_START + 1_100, SIGMA, "closed", force=True
    )
    assert [c.cell_id for c in again.cells] == [c.cell_id for c in view.cells]
    assert all(a.cell_id is b.cell_id for a, b in zip(again.cells, view.cells, strict=True))
    now = COLUMN_START + 1_100
    for k in range(40):  # 40 columns later, 16 rows apart each time: ~7700 distinct cells
        now += 5_000
        book.refresh(now, PRICE + 16_000 * k, now, SIGMA, "closed")
    assert 0 < len(book._static) <= tap.quotes._STATIC_CELLS_MAX


@pytest.mark.parametrize("interval_ms", [250, 300])
def test_a_cell_requoted_alone_reuses_the_grid_s_row_recursions(
    interval_ms: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same rows, same σ: pricing a cell alone finds its row's recursion in the book's cache
    (with 300 ms ticks the windows hold 16 or 17 ticks: the key is the whole grid's, not the
    cell's window's)."""
    monkeypatch.setattr(tap.quotes, "CELL_REQUOTES_PER_TICK", 10**6)
    book = _book(interval_ms, COLUMN_START + 1_000)
    rows = book._absorption._rows
    known = dict(rows)
    view = book.view
    assert view is not None
    now = COLUMN_START + 1_100
    for cell in view.cells:
        book.quote_tick(cell.cell_id, now, PRICE + 150, now, SIGMA, "closed")
    assert rows == known and all(rows[k] is v for k, v in known.items())


@pytest.mark.parametrize("interval_ms", [250, 300, 40])
def test_only_prices_the_asked_window_as_the_whole_call_does(interval_ms: int) -> None:
    rng = random.Random(interval_ms)
    price = PRICE + rng.randint(-3_000, 3_000)
    as_of = COLUMN_START + rng.randint(0, 4_999)
    bands = [(r * 1_000, (r + 1) * 1_000) for r in range(price // 1_000 - 8, price // 1_000 + 8)]
    windows = [(c * 5_000 - as_of, (c + 1) * 5_000 - as_of) for c in range(C + 1, C + 13)]
    cache = AbsorptionCache()
    whole = tick_touch_probabilities(price, bands, SIGMA, interval_ms, windows, cache)
    for i, band in enumerate(bands):
        for j in range(len(windows)):
            [alone] = tick_touch_probabilities(
                price, [band], SIGMA, interval_ms, windows, cache, only=(j,)
            )
            # Equal up to the order of one dot product's sums (a separate recursion would
            # differ by ~1e-13).
            assert alone[j] == pytest.approx(whole[i][j], rel=1e-14, abs=1e-300)
    assert len(cache._rows) == len(bands)  # and each row's recursion was the whole call's
