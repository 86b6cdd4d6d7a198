"""The resolver index: which open bets a tick decides, and how.

It decides, per API.md "Grid and cells", each bet exactly once, always at a tick (its
`decided_by`): **won** at the first tick inside the window `[t_start, t_end)` whose price lies in
the closed band `[price_lo, price_hi]` (a price on a row line touches both rows); otherwise, at the
first tick at or after `t_end`, **void** (stake refunded, reason `feed_gap`) if a feed gap longer
than `max_gap_ms` overlapped the window, else **lost** (reason `column_end`). It leaves to its
caller where bets and ticks come from, delivering outcomes to the writer, and every clock: a
window is over when a tick says so, never when a clock does ("never guess").

A *gap* is the silence between two consecutive ticks `prev < ts` with `ts - prev > max_gap_ms`.
It overlaps a window when some instant strictly between the two ticks lies inside it:
`prev < t_end and ts > t_start`. That includes the silence from the last tick before the window to
the first one in or after it, and from the last one in the window to the first after it; a tick
exactly at `t_start` observes the window's first instant, so the silence before it does not count.

Why a gap voids at the window's close rather than at the gap: a touch observed later in the same
window is still a win ("wins iff some tick touches"), so voiding early could refund a bet the
player won. The refund waits at most one column.

Cost (DESIGN rule 9): open bets are indexed column → row → bets, so a tick does O(1) dict work
(its column, one or two rows) plus the bets it actually resolves, plus a heap pop per column it
closes; a tick ending a gap also marks the open columns the gap overlapped (at most
min(columns spanned, columns open)). Bets in other cells cost nothing.

Ticks must come in time order; a tick older than the last one is ignored (it can neither touch
an open window correctly nor close one). A tick *equal* in time to the last one is applied: an
exchange prints several trades in one millisecond exactly when the price moves fast, and a trade
touching a band in that millisecond wins the bet like any other. Equal times never make a gap and
never close anything the first tick of that millisecond did not already close. (The tick log
keeps a millisecond's trades in price order, not arrival order; `tap replay` accounts for that.)

The index remembers `history_ms` of recent ticks so a bet confirmed after its window opened (a
slow writer) is still judged on every tick of its window; `replay` re-resolves stored bets from a
stored tick sequence the same way, so startup reload, `tap replay` and live resolution agree
outcome for outcome.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from tap.grid import rows_touched
from tap.messages import DecidedBy, Outcome

# How far back the index remembers ticks for bets that arrive after their window opened. Bets are
# placed at least one column ahead, so only a writer stalled this long makes a bet that late.
DEFAULT_HISTORY_MS: Final = 120_000


class OpenBet(msgspec.Struct, frozen=True, kw_only=True):
    """A confirmed bet as the resolver needs it. Its cell must lie on the index's grid:
    `t_start = col * column_ms`, `price_lo = row * row_height` (checked by `add`)."""

    bet_id: str
    address: str
    col: int
    row: int
    t_start: int  # ms, inclusive
    t_end: int  # ms, exclusive
    price_lo: int  # increments, inclusive
    price_hi: int  # increments, inclusive
    amount: int  # units staked
    multiplier_bps: int  # locked quote


class BetOutsideHistory(ValueError):
    """The bet's window opened before the oldest tick the index still remembers, so it cannot be
    judged from memory. Its stake stays locked; a restart's reload judges it from stored ticks."""


Closing = Literal["column_end", "feed_gap"]


class ResolverIndex:
    """The open bets of one symbol, and the tick-by-tick rules that settle them."""

    def __init__(
        self,
        symbol: str,
        column_ms: int,
        row_height: int,
        max_gap_ms: int,
        last_tick_ts: int | None = None,
        *,
        history_ms: int = DEFAULT_HISTORY_MS,
    ) -> None:
        """`last_tick_ts` is the newest tick already behind this index (from the tick log at
        startup), so the first tick fed in can be checked for a gap; None when there is none."""
        if column_ms <= 0 or row_height <= 0 or max_gap_ms <= 0 or history_ms < 0:
            raise ValueError("column_ms, row_height and max_gap_ms must be positive")
        self.symbol = symbol
        self.column_ms = column_ms
        self.row_height = row_height
        self.max_gap_ms = max_gap_ms
        self._history_ms = history_ms
        self._last_tick_ts = last_tick_ts
        self._columns: dict[int, dict[int, dict[str, OpenBet]]] = {}  # col → row → bet_id → bet
        self._open: dict[str, OpenBet] = {}  # bet_id → bet, for idempotent `add`
        self._gapped: set[int] = set()  # open columns a gap has overlapped
        self._ends: list[int] = []  # heap of open columns by end time (stale entries skipped)
        self._history: deque[tuple[int, int]] = deque()  # (ts, price), the last history_ms
        self._history_prior = last_tick_ts  # ts of the tick just before `_history`

    @property
    def last_tick_ts(self) -> int | None:
        return self._last_tick_ts

    @property
    def open_bets(self) -> int:
        return len(self._open)

    def is_open(self, bet_id: str) -> bool:
        return bet_id in self._open

    def accepts(self, ts: int) -> bool:
        """Whether `on_tick` would apply a tick at `ts`: not older than the newest one (equal is
        applied: several trades share a millisecond). The caller stores exactly these ticks."""
        return self._last_tick_ts is None or ts >= self._last_tick_ts

    # ── inputs ──

    def add(self, bet: OpenBet) -> list[Outcome]:
        """Index a confirmed bet. Usually its window lies ahead and nothing is decided; a bet
        that arrives after its window opened is judged at once on the remembered ticks (it may
        already be won, lost or void). Adding a bet that is already open does nothing; adding one
        that was already resolved resolves it again — the writer's settle is the guard."""
        self._check_geometry(bet)
        if bet.bet_id in self._open:
            return []
        gapped = False
        if self._last_tick_ts is not None and bet.t_start <= self._last_tick_ts:
            outcome, gapped = self._judge_from_history(bet)
            if outcome is not None:
                return [outcome]
        cells = self._columns.get(bet.col)
        if cells is None:
            cells = self._columns[bet.col] = {}
            heapq.heappush(self._ends, bet.col)
        cells.setdefault(bet.row, {})[bet.bet_id] = bet
        self._open[bet.bet_id] = bet
        if gapped:
            self._gapped.add(bet.col)
        return []

    def on_tick(self, ts: int, price: int) -> list[Outcome]:
        """Apply one tick: mark the windows a gap ending here overlapped, settle the touched
        cells of the current column as won, then close every column that ended at or before
        `ts` (void if gapped, else lost). Returns the outcomes in that order."""
        if not self.accepts(ts):
            return []
        last = self._last_tick_ts
        if last is not None and ts - last > self.max_gap_ms:
            self._mark_gap(last, ts)
        outcomes: list[Outcome] = []
        col = ts // self.column_ms
        cells = self._columns.get(col)
        if cells is not None:
            for row in rows_touched(price, self.row_height):
                touched = cells.pop(row, None)
                if touched is not None:
                    for bet in touched.values():
                        del self._open[bet.bet_id]
                        outcomes.append(_won(bet, ts, price))
            if not cells:
                del self._columns[col]
                self._gapped.discard(col)
        ends = self._ends
        while ends and (ends[0] + 1) * self.column_ms <= ts:
            outcomes += self._close(heapq.heappop(ends), DecidedBy(ts=ts, price=price), ts)
        self._remember(ts, price)
        return outcomes

    def on_column_end(self, col: int) -> list[Outcome]:
        """Close a column now, without waiting for a tick at or after its end.

        Safe only when the caller *knows* the tick log is complete up to the column's `t_end`
        (for instance a feed that confirms "no trades until t_end" by heartbeat): the silence
        from the last tick to `t_end` is then treated as observed up to `t_end`, so it voids the
        column if it is longer than `max_gap_ms`, and otherwise the untouched bets lose. Outcomes
        carry `decided_by=None` and `at = t_end`. Without that knowledge do not call this: the
        outcomes wait for the next tick, which is what the live resolver does."""
        t_end = (col + 1) * self.column_ms
        last = self._last_tick_ts
        silent = last is None or t_end - last > self.max_gap_ms
        if silent and col in self._columns:
            self._gapped.add(col)
        return self._close(col, None, t_end)

    def reload(self, bets: Iterable[OpenBet], ticks: Iterable[tuple[int, int]]) -> list[Outcome]:
        """Add every bet, then apply the `(ts, price)` ticks in order: a restart's catch-up.
        The ticks must start right after this index's `last_tick_ts` and every bet's window must
        open after it (`BetOutsideHistory` otherwise: the stored ticks do not cover the bet)."""
        outcomes: list[Outcome] = []
        for bet in bets:
            outcomes += self.add(bet)
        for ts, price in ticks:
            outcomes += self.on_tick(ts, price)
        return outcomes

    # ── the machinery ──

    def _check_geometry(self, bet: OpenBet) -> None:
        t_start = bet.col * self.column_ms
        price_lo = bet.row * self.row_height
        if (bet.t_start, bet.t_end, bet.price_lo, bet.price_hi) != (
            t_start,
            t_start + self.column_ms,
            price_lo,
            price_lo + self.row_height,
        ):
            raise ValueError(
                f"bet {bet.bet_id}: cell ({bet.col}, {bet.row}) is not on the {self.symbol} grid "
                f"(column_ms={self.column_ms}, row_height={self.row_height})"
            )

    def _mark_gap(self, prev: int, ts: int) -> None:
        first = prev // self.column_ms
        last = (ts - 1) // self.column_ms
        if last - first < len(self._columns):
            self._gapped.update(c for c in range(first, last + 1) if c in self._columns)
        else:
            self._gapped.update(c for c in self._columns if first <= c <= last)

    def _close(self, col: int, decided_by: DecidedBy | None, at: int) -> list[Outcome]:
        cells = self._columns.pop(col, None)
        if cells is None:
            return []
        reason: Closing = "feed_gap" if col in self._gapped else "column_end"
        self._gapped.discard(col)
        outcomes = []
        for bets in cells.values():
            for bet in bets.values():
                del self._open[bet.bet_id]
                outcomes.append(_closed(bet, reason, decided_by, at))
        return outcomes

    def _remember(self, ts: int, price: int) -> None:
        self._last_tick_ts = ts
        history = self._history
        history.append((ts, price))
        horizon = ts - self._history_ms
        while history[0][0] < horizon:
            self._history_prior = history.popleft()[0]

    def _judge_from_history(self, bet: OpenBet) -> tuple[Outcome | None, bool]:
        """The rules applied to the remembered ticks for one late bet: its outcome if they
        decide it, and whether a gap has overlapped its window so far."""
        prev = self._history_prior
        if prev is not None and prev >= bet.t_start:
            raise BetOutsideHistory(
                f"bet {bet.bet_id}: window opened at {bet.t_start}, but the oldest remembered "
                f"{self.symbol} tick follows {prev}"
            )
        gapped = False
        for ts, price in self._history:
            if ts >= bet.t_start:
                if ts < bet.t_end and bet.price_lo <= price <= bet.price_hi:
                    return _won(bet, ts, price), gapped
                if prev is not None and ts - prev > self.max_gap_ms and prev < bet.t_end:
                    gapped = gapped or ts > bet.t_start
                if ts >= bet.t_end:
                    reason: Closing = "feed_gap" if gapped else "column_end"
                    return _closed(bet, reason, DecidedBy(ts=ts, price=price), ts), gapped
            prev = ts
        return None, gapped


def _won(bet: OpenBet, ts: int, price: int) -> Outcome:
    return Outcome(
        bet_id=bet.bet_id,
        address=bet.address,
        status="won",
        amount=bet.amount,
        payout=bet.amount * bet.multiplier_bps // 10_000,
        decided_by=DecidedBy(ts=ts, price=price),
        reason="touch",
        at=ts,
    )


def _closed(bet: OpenBet, reason: Closing, decided_by: DecidedBy | None, at: int) -> Outcome:
    void = reason == "feed_gap"
    return Outcome(
        bet_id=bet.bet_id,
        address=bet.address,
        status="void" if void else "lost",
        amount=bet.amount,
        payout=bet.amount if void else 0,
        decided_by=decided_by,
        reason=reason,
        at=at,
    )


def replay(
    bets: Iterable[OpenBet],
    ticks: Iterable[tuple[int, int]],
    *,
    column_ms: int,
    row_height: int,
    max_gap_ms: int,
    prior_tick_ts: int | None = None,
) -> list[Outcome]:
    """Re-resolve `bets` from a stored `(ts, price)` sequence, exactly as the live index would.

    `prior_tick_ts` is the stored tick just before `ticks` (so a gap into the first window is
    seen); None when the log starts with `ticks`. Every bet's window must open after it. Bets the
    sequence does not decide yet get no outcome. Pure: same inputs, same outcomes, same order."""
    index = ResolverIndex("", column_ms, row_height, max_gap_ms, prior_tick_ts)
    return index.reload(bets, ticks)
