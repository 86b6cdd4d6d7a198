"""The circuit breaker: may the market take new bets right now, given what the feed has shown?

It decides one thing, `open` (refuse bets) or `closed` (take them), and why, from the ticks it is
shown, the time it is told and the operator's override. It contains no networking and reads no
clock: every call carries `now_ms`, and `next_deadline_ms()` says when time alone could change the
answer, so the actor that owns it sleeps exactly that long instead of polling. Publishing the
changes, the gauge and the override's transport are the caller's (`actors/breaker.py`).

The rules, in the words the operator reads (reasons are `BreakerChanged.reason`):

- **startup**: the breaker starts open; nothing is known about the feed yet.
- **stale_feed**: no tick has *arrived* for `stale_after_ms` (arrival = the `now_ms` passed with
  the tick, not the exchange's `ts`, so a skewed exchange clock cannot make a live feed look dead
  or a dead one look live). Stale exactly at `last_arrival + stale_after_ms`.
- **jump**: a tick's price differs by more than `jump_bps` of the earlier price from any tick whose
  `ts` lies within `jump_window_ms` before it (inclusive). Jumps use exchange time: that is the
  time the prices belong to.
- **late_feed**: a tick arrived more than `max_tick_age_ms` after its own `ts` (`now − ts >
  max_tick_age_ms`; 0 turns the rule off). A feed that flows but trails the exchange by seconds
  never goes stale, yet a player watching the exchange would bet with hindsight; so lateness
  opens the breaker like a jump does (a tick that is both is a jump). A late tick still proves
  the feed alive. `judge_tick_age=False` exempts a source whose `ts` is not an exchange's clock
  (the in-process simulator: see `Breaker.__init__`).
- **recovered**: closed again once a *run* of fresh ticks has lasted `hysteresis_ms`. A run is a
  chain of ticks whose arrivals are less than `stale_after_ms` apart; it starts at the first tick
  after startup or staleness and restarts at every jump or late tick (that tick is the first of
  the new run, and while an earlier price within the window still differs that much, each tick
  is a jump again; while the feed trails, each tick is late again). The feed must still be fresh
  at that moment: a close and a stale deadline on the same millisecond resolve as stale.
- **override**: the operator forces `open` or `closed`; `auto` hands control back to the rules,
  which kept running underneath, so `auto` lands directly on the state the tick history implies.

Using `>=` for staleness and `<` for "still the same run" makes the answer independent of whether
the caller delivers a tick or a deadline first when both fall on the same millisecond.

The breaker only refuses *new* bets. It never voids, settles or delays an open bet: the resolver
judges those from tick timestamps alone and never reads the breaker, so whatever opens it (our
own stall included) costs no player a bet already placed.

Ticks whose `ts` is older than the newest one seen are ignored entirely: an old price is not news
and says nothing about the feed being alive. Equal `ts` is accepted (several trades per ms).
`now_ms` never goes backwards here: an earlier value is read as the latest one seen.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

from tap.config import BreakerConfig
from tap.messages import BreakerChanged, BreakerMode, BreakerStateName

# ── the automatic machine, as a table ─────────────────────────────────────────────────────────
# A phase is named by the reason the operator sees while in it.
Phase = Literal[
    "startup",  # open: no run of fresh ticks has lasted the hysteresis since the process started
    "stale_feed",  # open: the feed went quiet; a new run may be under way
    "jump",  # open: the price moved too far too fast; a new run started at that tick
    "late_feed",  # open: a tick arrived more than max_tick_age_ms after its ts; a new run started
    "recovered",  # closed: a run of fresh ticks has lasted the hysteresis
]
# What can happen to the machine. Ticks are signals; so are the two deadlines, which fire when
# `now_ms` reaches them.
Signal = Literal[
    "fresh_tick",  # a tick that is not a jump
    "jump",  # a tick that is a jump
    "late",  # a tick that is not a jump but arrived more than max_tick_age_ms after its ts
    "stale",  # deadline: last arrival + stale_after_ms
    "settled",  # deadline: run start + hysteresis_ms, while the run is still fresh
]

AUTO_TRANSITIONS: Final[dict[Phase, dict[Signal, Phase]]] = {
    "startup": {
        "fresh_tick": "startup",
        "jump": "jump",
        "late": "late_feed",
        "stale": "stale_feed",
        "settled": "recovered",
    },
    "stale_feed": {
        "fresh_tick": "stale_feed",
        "jump": "jump",
        "late": "late_feed",
        "stale": "stale_feed",
        "settled": "recovered",
    },
    "jump": {
        "fresh_tick": "jump",
        "jump": "jump",
        "late": "late_feed",
        "stale": "stale_feed",
        "settled": "recovered",
    },
    "late_feed": {
        "fresh_tick": "late_feed",
        "jump": "jump",
        "late": "late_feed",
        "stale": "stale_feed",
        "settled": "recovered",
    },
    # No "settled" here: the settle deadline exists only while the machine is open.
    "recovered": {
        "fresh_tick": "recovered",
        "jump": "jump",
        "late": "late_feed",
        "stale": "stale_feed",
    },
}

PHASE_STATE: Final[dict[Phase, BreakerStateName]] = {
    "startup": "open",
    "stale_feed": "open",
    "jump": "open",
    "late_feed": "open",
    "recovered": "closed",
}

# What each signal does to the run of fresh ticks (its start time), besides the phase change.
RunEffect = Literal["start_if_none", "restart", "end", "keep"]
RUN_EFFECT: Final[dict[Signal, RunEffect]] = {
    "fresh_tick": "start_if_none",
    "jump": "restart",  # the jump tick is the first of the new run
    "late": "restart",  # so is a late tick: the run counts timely ticks only
    "stale": "end",
    "settled": "keep",
}

OVERRIDE_REASON: Final = "override"
MODES: Final[tuple[BreakerMode, ...]] = ("open", "closed", "auto")


class Breaker:
    """One market's breaker. Feed it `on_tick`, `on_time` and `override`; each returns the
    `BreakerChanged` events it caused, in order, stamped with the instant the rules say the change
    happened (a deadline's own time, even if `on_time` is called late)."""

    def __init__(
        self, cfg: BreakerConfig, symbol: str = "", *, judge_tick_age: bool = True
    ) -> None:
        """`symbol` only labels the events ("" = the one market of a one-feed process).

        `judge_tick_age=False` turns the late_feed rule off for a feed whose `ts` is not an
        exchange's clock but our own schedule: the in-process simulator. Nothing exists ahead of
        it for anyone to watch — its path is drawn when its ticks are made — so its ticks cannot
        trail a market; after a stall of our own event loop its catch-up ticks arrive "late" by
        construction (stamped with their scheduled times), and reading that as a late feed would
        let anyone who can stall the loop close the market for `hysteresis_ms`. Every real feed
        (including `ws-sim`, which is a network hop away) is judged."""
        if (
            cfg.stale_after_ms <= 0
            or cfg.hysteresis_ms < 0
            or cfg.jump_window_ms < 0
            or cfg.max_tick_age_ms < 0
        ):
            raise ValueError(f"breaker config out of range: {cfg!r}")
        self._cfg = cfg
        self._symbol = symbol
        self._max_age = cfg.max_tick_age_ms if judge_tick_age else 0  # 0: not judged
        self._phase: Phase = "startup"
        self._mode: BreakerMode = "auto"
        self._now: int | None = None
        self._last_arrival: int | None = None  # now_ms of the newest accepted tick
        self._last_ts: int | None = None  # exchange ts of the newest accepted tick
        self._run_start: int | None = None  # None: no run of fresh ticks under way
        # Ticks within jump_window_ms, as monotonic queues of (ts, price): the front of `_lows` is
        # the lowest price in the window, the front of `_highs` the highest. Each tick enters and
        # leaves each queue once, so a jump check is amortised O(1) however busy the feed is.
        self._lows: deque[tuple[int, int]] = deque()
        self._highs: deque[tuple[int, int]] = deque()

    # ── what the edge and the hub read ──

    @property
    def state(self) -> BreakerStateName:
        if self._mode != "auto":
            return self._mode
        return PHASE_STATE[self._phase]

    @property
    def reason(self) -> str:
        return OVERRIDE_REASON if self._mode != "auto" else self._phase

    @property
    def mode(self) -> BreakerMode:
        return self._mode

    @property
    def auto_state(self) -> BreakerStateName:
        """The state the rules give, whatever the override says."""
        return PHASE_STATE[self._phase]

    @property
    def auto_reason(self) -> str:
        return self._phase

    def next_deadline_ms(self) -> int | None:
        """When `on_time` must next be called for the published state to stay exact, or None if
        only a tick or an override can change it (no tick yet, the feed already stale, or an
        override in force: the rules keep running underneath and catch up on the next call)."""
        if self._mode != "auto":
            return None
        deadline = self._auto_deadline()
        return None if deadline is None else deadline[0]

    # ── inputs ──

    def on_tick(self, ts_ms: int, price: int, now_ms: int) -> list[BreakerChanged]:
        changes = self._advance(now_ms)
        if self._last_ts is not None and ts_ms < self._last_ts:
            return changes
        jumped = self._observe_price(ts_ms, price)
        late = self._max_age > 0 and self._clock() - ts_ms > self._max_age
        self._last_ts = ts_ms
        self._last_arrival = self._now
        signal: Signal = "jump" if jumped else "late" if late else "fresh_tick"
        changes += self._fire(signal, self._clock())
        # A zero hysteresis closes on the tick itself.
        changes += self._advance(self._clock())
        return changes

    def on_time(self, now_ms: int) -> list[BreakerChanged]:
        return self._advance(now_ms)

    def override(self, mode: BreakerMode, now_ms: int) -> list[BreakerChanged]:
        if mode not in MODES:
            raise ValueError(f"breaker mode must be one of {MODES}, got {mode!r}")
        changes = self._advance(now_ms)
        before = (self.state, self.reason)
        self._mode = mode
        if (self.state, self.reason) != before:
            changes.append(self._changed(self.state, self.reason, self._clock()))
        return changes

    # ── the machinery ──

    def _clock(self) -> int:
        assert self._now is not None, "time is set by the first call"
        return self._now

    def _auto_deadline(self) -> tuple[int, Signal] | None:
        if self._run_start is None or self._last_arrival is None:
            return None
        stale_at = self._last_arrival + self._cfg.stale_after_ms
        if PHASE_STATE[self._phase] == "open":
            settle_at = self._run_start + self._cfg.hysteresis_ms
            if settle_at < stale_at:
                return settle_at, "settled"
        return stale_at, "stale"

    def _advance(self, now_ms: int) -> list[BreakerChanged]:
        """Fire every deadline up to `now_ms`, each at its own time."""
        now = now_ms if self._now is None else max(now_ms, self._now)
        changes: list[BreakerChanged] = []
        while (deadline := self._auto_deadline()) is not None and deadline[0] <= now:
            changes += self._fire(deadline[1], deadline[0])
        self._now = now
        return changes

    def _fire(self, signal: Signal, at: int) -> list[BreakerChanged]:
        before = (self.state, self.reason)
        self._phase = AUTO_TRANSITIONS[self._phase][signal]
        effect = RUN_EFFECT[signal]
        if effect == "restart" or (effect == "start_if_none" and self._run_start is None):
            self._run_start = at
        elif effect == "end":
            self._run_start = None
        after = (self.state, self.reason)
        if after == before:
            return []
        return [self._changed(after[0], after[1], at)]

    def _changed(self, state: BreakerStateName, reason: str, at: int) -> BreakerChanged:
        return BreakerChanged(state=state, reason=reason, at=at, symbol=self._symbol)

    def _observe_price(self, ts: int, price: int) -> bool:
        """Add the tick to the jump window; True if it moved more than `jump_bps` from any price
        in the window. For an earlier price q below `price`, the move is largest relative to the
        lowest q; above `price`, to the highest (for jump_bps < 10000); so the two fronts decide."""
        horizon = ts - self._cfg.jump_window_ms
        for window in (self._lows, self._highs):
            while window and window[0][0] < horizon:
                window.popleft()
        bps = self._cfg.jump_bps
        jumped = False
        if self._lows:
            low = self._lows[0][1]
            jumped = (price - low) * 10_000 > bps * low
        if self._highs and not jumped:
            high = self._highs[0][1]
            jumped = (high - price) * 10_000 > bps * high
        while self._lows and self._lows[-1][1] >= price:
            self._lows.pop()
        self._lows.append((ts, price))
        while self._highs and self._highs[-1][1] <= price:
            self._highs.pop()
        self._highs.append((ts, price))
        return jumped
