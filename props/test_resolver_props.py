"""Property: the resolver index decides every bet exactly as a brute-force reading of the ticks.

The reference below knows nothing of columns, rows, heaps or history; it reads the whole tick
sequence for one bet at a time, straight from API.md:
- **won** if a tick inside `[t_start, t_end)` has a price in `[price_lo, price_hi]` — the first
  such tick decides;
- else, once the first tick at or after `t_end` exists, **void** if any silence between
  consecutive ticks (starting from the tick before the sequence, if known) longer than
  `max_gap_ms` overlaps the window (`prev < t_end and ts > t_start`), else **lost** — that tick
  decides;
- else **undecided**: no outcome may exist yet.

Bets are added at random points of the tick stream, before, during or after their windows, so the
late-bet path is compared too; ticks go backwards (ignored), repeat their millisecond (applied:
several trades per ms, issue 9 defect 5), jump over gaps and land exactly on row lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from tap.messages import DecidedBy, Outcome
from tap.resolver import BetOutsideHistory, OpenBet, ResolverIndex, replay

ROW_HEIGHT = 10
ROWS = 6
T0 = 1_000


@dataclass(frozen=True)
class Scenario:
    column_ms: int
    max_gap_ms: int
    history_ms: int
    prior: int | None
    ticks: list[tuple[int, int]]
    bets: list[tuple[int, OpenBet]]  # (number of ticks applied before the bet is added, bet)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    column_ms = draw(st.sampled_from([50, 100, 200]))
    max_gap_ms = draw(st.sampled_from([20, 40, 150]))
    history_ms = draw(st.sampled_from([10**12, 10**12, column_ms, 3 * column_ms]))
    prior = draw(st.one_of(st.none(), st.just(T0)))
    steps = st.one_of(
        st.integers(1, max_gap_ms),  # an ordinary next tick
        st.sampled_from([max_gap_ms, max_gap_ms + 1]),  # the edge of a gap
        st.integers(max_gap_ms + 1, max_gap_ms + 3 * column_ms),  # a feed gap
        st.just("column"),  # exactly the next column's first millisecond
        st.just("column after gap"),  # the same, after more than max_gap_ms of silence
        st.just(0),  # another trade in the same millisecond: applied like any tick
        st.integers(-max_gap_ms, -1),  # an older tick: ignored
    )
    prices = st.one_of(
        st.integers(0, ROWS * ROW_HEIGHT),
        st.integers(0, ROWS).map(lambda r: r * ROW_HEIGHT),  # exactly on a row line
    )
    ts = T0
    ticks = []
    for step, price in draw(st.lists(st.tuples(steps, prices), max_size=60)):
        if step == "column":
            ts = (ts // column_ms + 1) * column_ms
        elif step == "column after gap":
            ts = ((ts + max_gap_ms) // column_ms + 1) * column_ms
        else:
            ts += step
        ticks.append((ts, price))
    end = max([T0, *(t for t, _ in ticks)])
    cols = st.integers(T0 // column_ms - 1, end // column_ms + 1)
    if ticks:  # favour columns that start exactly at a tick (the edge of "overlaps")
        cols = st.one_of(cols, st.sampled_from([t // column_ms for t, _ in ticks]))
    cells = draw(st.lists(st.tuples(cols, st.integers(0, ROWS - 1)), max_size=25))
    bets = []
    for i, (col, row) in enumerate(cells):
        at = draw(st.integers(0, len(ticks)))
        amount = draw(st.integers(1, 10**9))
        mult = draw(st.integers(10_000, 1_000_000))
        bets.append(
            (
                at,
                OpenBet(
                    bet_id=f"b{i}",
                    address="0x" + f"{i:040x}",
                    col=col,
                    row=row,
                    t_start=col * column_ms,
                    t_end=(col + 1) * column_ms,
                    price_lo=row * ROW_HEIGHT,
                    price_hi=(row + 1) * ROW_HEIGHT,
                    amount=amount,
                    multiplier_bps=mult,
                ),
            )
        )
    return Scenario(column_ms, max_gap_ms, history_ms, prior, ticks, bets)


def accepted(prior: int | None, ticks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ticks a time-ordered consumer keeps: each not older than the newest before it
    (equal timestamps are kept, in the order they came)."""
    kept: list[tuple[int, int]] = []
    newest = prior
    for ts, price in ticks:
        if newest is None or ts >= newest:
            kept.append((ts, price))
            newest = ts
    return kept


def reference(
    bet: OpenBet, prior: int | None, seq: list[tuple[int, int]], max_gap: int
) -> Outcome | None:
    touches = [
        (ts, p)
        for ts, p in seq
        if bet.t_start <= ts < bet.t_end and bet.price_lo <= p <= bet.price_hi
    ]
    if touches:
        ts, p = touches[0]
        return Outcome(
            bet_id=bet.bet_id,
            address=bet.address,
            status="won",
            amount=bet.amount,
            payout=bet.amount * bet.multiplier_bps // 10_000,
            decided_by=DecidedBy(ts=ts, price=p),
            reason="touch",
            at=ts,
        )
    after = [(ts, p) for ts, p in seq if ts >= bet.t_end]
    if not after:
        return None
    close_ts, close_price = after[0]
    stamps = ([] if prior is None else [prior]) + [ts for ts, _ in seq if ts <= close_ts]
    gapped = any(c - p > max_gap and p < bet.t_end and c > bet.t_start for p, c in pairwise(stamps))
    return Outcome(
        bet_id=bet.bet_id,
        address=bet.address,
        status="void" if gapped else "lost",
        amount=bet.amount,
        payout=bet.amount if gapped else 0,
        decided_by=DecidedBy(ts=close_ts, price=close_price),
        reason="feed_gap" if gapped else "column_end",
        at=close_ts,
    )


def remembered_from(
    prior: int | None, seq_so_far: list[tuple[int, int]], history_ms: int
) -> int | None:
    """The newest tick the index has forgotten (or the prior): the contract of `history_ms`."""
    if not seq_so_far:
        return prior
    horizon = seq_so_far[-1][0] - history_ms
    forgotten = [ts for ts, _ in seq_so_far if ts < horizon]
    return forgotten[-1] if forgotten else prior


@settings(max_examples=400)
@given(scenarios())
def test_index_matches_brute_force_reference_and_resolves_each_bet_once(sc: Scenario) -> None:
    index = ResolverIndex(
        "X", sc.column_ms, ROW_HEIGHT, sc.max_gap_ms, sc.prior, history_ms=sc.history_ms
    )
    outcomes: list[Outcome] = []
    refused: set[str] = set()
    applied: list[tuple[int, int]] = []
    for k in range(len(sc.ticks) + 1):
        for at, bet in sc.bets:
            if at != k:
                continue
            seq_so_far = accepted(sc.prior, applied)
            last = seq_so_far[-1][0] if seq_so_far else sc.prior
            forgotten = remembered_from(sc.prior, seq_so_far, sc.history_ms)
            must_refuse = (
                last is not None
                and bet.t_start <= last
                and forgotten is not None
                and forgotten >= bet.t_start
            )
            try:
                outcomes += index.add(bet)
            except BetOutsideHistory:
                assert must_refuse, f"{bet.bet_id} refused though its window is remembered"
                refused.add(bet.bet_id)
            else:
                assert not must_refuse, f"{bet.bet_id} judged without the ticks of its window"
        if k < len(sc.ticks):
            outcomes += index.on_tick(*sc.ticks[k])
            applied.append(sc.ticks[k])

    ids = [o.bet_id for o in outcomes]
    assert len(ids) == len(set(ids)), "a bet was resolved twice"
    seq = accepted(sc.prior, sc.ticks)
    judged = [bet for _, bet in sc.bets if bet.bet_id not in refused]
    expected = {
        o.bet_id: o
        for bet in judged
        if (o := reference(bet, sc.prior, seq, sc.max_gap_ms)) is not None
    }
    assert {o.bet_id: o for o in outcomes} == expected
    assert index.open_bets == len(judged) - len(expected)  # the undecided wait, nothing else


@given(scenarios())
def test_replay_of_the_stored_ticks_gives_the_reference_outcomes(sc: Scenario) -> None:
    bets = [b for _, b in sc.bets if sc.prior is None or b.t_start > sc.prior]
    got = replay(
        bets,
        sc.ticks,
        column_ms=sc.column_ms,
        row_height=ROW_HEIGHT,
        max_gap_ms=sc.max_gap_ms,
        prior_tick_ts=sc.prior,
    )
    seq = accepted(sc.prior, sc.ticks)
    expected = [o for b in bets if (o := reference(b, sc.prior, seq, sc.max_gap_ms))]
    assert sorted(got, key=lambda o: o.bet_id) == sorted(expected, key=lambda o: o.bet_id)
