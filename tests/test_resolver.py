"""The resolver index (`tap.resolver`): when a bet is won, lost or void, and what a tick costs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

import pytest

from tap.messages import DecidedBy
from tap.resolver import BetOutsideHistory, OpenBet, ResolverIndex, replay

COLUMN_MS = 5_000
ROW_HEIGHT = 1_000
MAX_GAP_MS = 2_000


def bet(
    col: int, row: int, bet_id: str = "", amount: int = 1_000_000, mult: int = 25_000
) -> OpenBet:
    return OpenBet(
        bet_id=bet_id or f"b{col}.{row}",
        address="0x" + "ab" * 20,
        col=col,
        row=row,
        t_start=col * COLUMN_MS,
        t_end=(col + 1) * COLUMN_MS,
        price_lo=row * ROW_HEIGHT,
        price_hi=(row + 1) * ROW_HEIGHT,
        amount=amount,
        multiplier_bps=mult,
    )


def index(last_tick_ts: int | None = None, **kw: Any) -> ResolverIndex:
    return ResolverIndex("BTC-USD", COLUMN_MS, ROW_HEIGHT, MAX_GAP_MS, last_tick_ts, **kw)


def test_touch_wins_at_the_first_touching_tick_before_the_window_ends() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50, amount=1_000_001, mult=29_600))
    assert ix.on_tick(10_000, 49_999) == []  # just below the band
    [won] = ix.on_tick(11_000, 50_500)
    assert (won.status, won.reason, won.decided_by, won.at) == (
        "won",
        "touch",
        DecidedBy(ts=11_000, price=50_500),
        11_000,
    )
    assert won.payout == 1_000_001 * 29_600 // 10_000  # integer floor, no float
    assert ix.on_tick(11_500, 50_500) == []  # decided once
    assert ix.open_bets == 0


def test_untouched_bets_lose_at_the_first_tick_at_or_after_t_end() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    ix.add(bet(2, 51))
    for ts in range(10_000, 15_000, 1_000):
        assert ix.on_tick(ts, 40_000) == []
    assert ix.on_tick(14_999, 40_000) == []  # still inside the window
    lost = ix.on_tick(15_400, 50_500)  # after t_end: a touch no longer counts
    assert sorted(o.bet_id for o in lost) == ["b2.50", "b2.51"]
    assert {(o.status, o.reason, o.payout) for o in lost} == {("lost", "column_end", 0)}
    assert {o.decided_by for o in lost} == {DecidedBy(ts=15_400, price=50_500)}


def test_tick_at_t_end_belongs_to_the_next_window() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    ix.add(bet(3, 50))
    ix.on_tick(11_000, 40_000)
    ix.on_tick(13_000, 40_000)
    outcomes = ix.on_tick(15_000, 50_000)
    assert {(o.bet_id, o.status) for o in outcomes} == {("b3.50", "won"), ("b2.50", "lost")}


def test_feed_gap_inside_the_window_voids_untouched_bets_with_a_full_refund() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50, amount=7_000_000))
    ix.on_tick(10_000, 40_000)
    assert ix.on_tick(12_001, 40_000) == []  # 2001 ms of silence: void, decided at the close
    [void] = ix.on_tick(15_000, 40_000)
    assert (void.status, void.reason, void.payout, void.decided_by) == (
        "void",
        "feed_gap",
        7_000_000,
        DecidedBy(ts=15_000, price=40_000),
    )


def test_a_touch_after_a_gap_in_the_same_window_still_wins() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    ix.on_tick(10_000, 40_000)
    ix.on_tick(13_000, 40_000)  # gap
    [won] = ix.on_tick(13_500, 50_000)
    assert won.status == "won"


def test_gap_of_exactly_max_gap_ms_is_not_a_gap() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    for ts in (10_000, 12_000, 14_000):  # exactly max_gap_ms apart
        ix.on_tick(ts, 40_000)
    [lost] = ix.on_tick(15_000, 40_000)
    assert lost.status == "lost"


def test_silence_ending_exactly_at_window_start_does_not_void_it() -> None:
    ix = index(last_tick_ts=5_000)
    ix.add(bet(2, 50))
    ix.on_tick(10_000, 40_000)  # 5 s of silence, but the window's first instant is observed
    ix.on_tick(12_000, 40_000)
    ix.on_tick(14_000, 40_000)
    [lost] = ix.on_tick(15_000, 40_000)
    assert lost.status == "lost"


def test_silence_running_past_t_end_voids_the_window_it_started_in() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    ix.on_tick(14_000, 40_000)
    [void] = ix.on_tick(16_500, 40_000)  # (14000, 16500) covers the window's last second
    assert (void.status, void.decided_by) == ("void", DecidedBy(ts=16_500, price=40_000))


def test_gap_voids_every_open_column_it_spans() -> None:
    ix = index(last_tick_ts=9_000)
    for col in (2, 3, 4, 5):
        ix.add(bet(col, 50))
    ix.on_tick(9_500, 40_000)
    outcomes = ix.on_tick(21_000, 40_000)  # silence over cols 2, 3 and part of 4
    assert {(o.bet_id, o.status) for o in outcomes} == {("b2.50", "void"), ("b3.50", "void")}
    ix.on_tick(23_000, 40_000)
    [col4] = ix.on_tick(25_000, 40_000)
    assert col4.status == "void"
    ix.on_tick(27_000, 40_000)
    ix.on_tick(29_000, 40_000)
    [col5] = ix.on_tick(30_000, 40_000)
    assert col5.status == "lost"


def test_price_exactly_on_a_row_line_touches_both_rows() -> None:
    ix = index(last_tick_ts=9_900)
    for row in (49, 50, 51):
        ix.add(bet(2, row))
    outcomes = ix.on_tick(10_000, 50_000)
    assert sorted(o.bet_id for o in outcomes) == ["b2.49", "b2.50"]
    assert {o.status for o in outcomes} == {"won"}


def test_ticks_older_than_the_last_one_are_ignored() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    ix.on_tick(11_000, 40_000)
    assert not ix.accepts(10_999)
    assert ix.on_tick(10_999, 50_500) == []
    assert ix.last_tick_ts == 11_000
    assert ix.open_bets == 1


def test_a_touch_in_the_same_millisecond_as_the_last_tick_wins() -> None:
    """Issue 9, defect 5: two trades in one ms, the second in the band. The old index dropped
    every tick with `ts <= last`, so the touching trade was ignored and the bet settled lost."""
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    assert ix.on_tick(11_000, 40_000) == []
    assert ix.accepts(11_000)
    [won] = ix.on_tick(11_000, 50_500)
    assert (won.bet_id, won.status, won.reason) == ("b2.50", "won", "touch")
    assert won.decided_by == DecidedBy(ts=11_000, price=50_500)
    assert won.at == 11_000
    assert ix.open_bets == 0


def test_equal_timestamps_make_no_gap_and_close_nothing_twice() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    ix.add(bet(3, 50))
    for _ in range(3):  # a millisecond crowded with trades is no silence
        assert ix.on_tick(11_500, 40_000) == []
    ix.on_tick(13_000, 40_000)
    closed = ix.on_tick(15_000, 40_000)  # the first tick at t_end closes column 2
    assert [(o.bet_id, o.status) for o in closed] == [("b2.50", "lost")]
    assert ix.on_tick(15_000, 40_100) == []  # a second trade at t_end closes nothing again
    [won] = ix.on_tick(15_000, 50_000)  # ... but touches column 3, which starts at 15 000
    assert (won.bet_id, won.status, won.decided_by) == (
        "b3.50",
        "won",
        DecidedBy(ts=15_000, price=50_000),
    )


def test_bet_confirmed_after_its_window_opened_is_judged_on_the_remembered_ticks() -> None:
    ix = index(last_tick_ts=9_900)
    for ts, price in ((10_000, 40_000), (11_000, 50_200), (12_000, 40_000)):
        ix.on_tick(ts, price)
    [won] = ix.add(bet(2, 50))
    assert won.decided_by == DecidedBy(ts=11_000, price=50_200)
    assert ix.add(bet(2, 60)) == []  # not decided yet: indexed
    ix.on_tick(14_000, 40_000)
    assert [o.bet_id for o in ix.on_tick(16_000, 40_000)] == ["b2.60"]
    [lost] = ix.add(bet(2, 70))  # its window closed at the 16000 tick
    assert (lost.status, lost.decided_by) == ("lost", DecidedBy(ts=16_000, price=40_000))


def test_late_bet_inherits_a_gap_already_seen_in_its_window() -> None:
    ix = index(last_tick_ts=9_900)
    ix.on_tick(10_000, 40_000)
    ix.on_tick(13_000, 40_000)  # gap inside column 2, no bets open yet
    assert ix.add(bet(2, 50)) == []
    [void] = ix.on_tick(15_000, 40_000)
    assert void.status == "void"


def test_bet_whose_window_opened_before_the_remembered_ticks_is_refused() -> None:
    ix = index(last_tick_ts=9_900, history_ms=3_000)
    for ts in range(10_000, 20_000, 500):
        ix.on_tick(ts, 40_000)
    with pytest.raises(BetOutsideHistory):
        ix.add(bet(3, 50))  # window 15000..20000, but ticks before 16500 are forgotten
    assert ix.open_bets == 0
    fresh = index(last_tick_ts=20_000)
    with pytest.raises(BetOutsideHistory):
        fresh.add(bet(3, 50))  # nothing remembered at all


def test_history_keeps_ticks_no_older_than_history_ms_before_the_newest() -> None:
    kept = index(last_tick_ts=9_000, history_ms=3_000)
    kept.on_tick(10_000, 40_000)
    kept.on_tick(13_000, 40_000)
    assert kept.add(bet(2, 50)) == []  # the 10000 tick is exactly 3000 ms old: remembered
    forgot = index(last_tick_ts=9_000, history_ms=3_000)
    forgot.on_tick(10_000, 40_000)
    forgot.on_tick(13_001, 40_000)
    with pytest.raises(BetOutsideHistory):
        forgot.add(bet(2, 50))


def test_adding_an_open_bet_again_changes_nothing() -> None:
    ix = index(last_tick_ts=9_900)
    assert ix.add(bet(2, 50)) == []
    assert ix.add(bet(2, 50)) == []
    assert ix.open_bets == 1
    assert len(ix.on_tick(10_000, 50_500)) == 1


def test_bet_off_the_index_grid_is_refused() -> None:
    ix = index()
    good = bet(2, 50)
    for broken in (
        OpenBet(**{**_fields(good), "t_end": good.t_end + 1}),
        OpenBet(**{**_fields(good), "price_lo": good.price_lo + 1}),
        OpenBet(**{**_fields(good), "col": 3}),
    ):
        with pytest.raises(ValueError, match="not on the BTC-USD grid"):
            ix.add(broken)


def _fields(b: OpenBet) -> dict[str, Any]:
    return {f: getattr(b, f) for f in b.__struct_fields__}


def test_column_end_closes_early_only_on_the_callers_word() -> None:
    ix = index(last_tick_ts=9_900)
    ix.add(bet(2, 50))
    ix.add(bet(3, 50))
    for ts in (10_000, 12_000, 14_000):
        ix.on_tick(ts, 40_000)
    [lost] = ix.on_column_end(2)  # 1000 ms of silence to t_end: observed, not a gap
    assert (lost.status, lost.decided_by, lost.at) == ("lost", None, 15_000)
    [void] = ix.on_column_end(3)  # 6000 ms of silence to its t_end: a gap
    assert (void.status, void.reason, void.at) == ("void", "feed_gap", 20_000)
    assert ix.on_column_end(3) == []
    assert ix.on_tick(20_000, 50_500) == []


def test_replay_decides_exactly_what_the_live_index_decided() -> None:
    bets = [bet(col, row) for col in range(2, 7) for row in range(46, 56)]
    ticks = [(9_000 + i * 700, 48_000 + (i * 3_701) % 5_000) for i in range(40)]
    ticks[20:25] = []  # a hole of 4200 ms
    live = index(last_tick_ts=8_000)
    outcomes = [o for b in bets for o in live.add(b)]
    for ts, price in ticks:
        outcomes += live.on_tick(ts, price)
    again = replay(
        bets,
        ticks,
        column_ms=COLUMN_MS,
        row_height=ROW_HEIGHT,
        max_gap_ms=MAX_GAP_MS,
        prior_tick_ts=8_000,
    )
    assert again == outcomes
    assert {o.status for o in outcomes} == {"won", "lost", "void"}


def opcodes(call: Callable[[], object]) -> int:
    """Python bytecodes executed by `call` (and everything it calls): work, not time."""
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def test_tick_work_does_not_grow_with_bets_in_other_cells() -> None:
    def work_with(others: int) -> list[int]:
        ix = index(last_tick_ts=9_900)
        ix.add(bet(2, 50, "mine"))
        ix.add(bet(3, 50, "next"))
        for n in range(others):  # other rows of the next column, and later columns
            ix.add(bet(3 + n % 200, 100 + n // 200))
        # miss, win "mine", miss, close column 2 and win "next", miss among the others
        script = [(10_000, 40_000), (11_000, 50_500), (12_000, 40_000), (15_000, 50_000)]
        script.append((16_000, 40_000))
        return [opcodes(partial(ix.on_tick, ts, price)) for ts, price in script]

    few, many = work_with(10), work_with(20_000)
    assert few == many


def test_tick_work_does_grow_with_the_bets_it_resolves() -> None:
    """The counter can see bet-proportional work, so the test above can fail."""

    def work_touching(n: int) -> int:
        ix = index(last_tick_ts=9_900)
        for i in range(n):
            ix.add(bet(2, 50, f"b{i}"))
        return opcodes(lambda: ix.on_tick(10_000, 50_500))

    assert work_touching(100) - work_touching(1) >= 99 * 10
