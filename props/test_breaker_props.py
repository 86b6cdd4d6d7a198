"""Property: the breaker machine agrees, after every step, with a model read straight off its rules.

Fake time only: the test owns `now` and moves it by rule. The model keeps the raw history (every
accepted tick's arrival, exchange time and price, and the override mode) and recomputes the
expected state from scratch at any instant — no phases, deadlines or monotonic queues:

- no tick yet → open, "startup"; last arrival ≥ stale_after_ms ago → open, "stale_feed";
- otherwise the *run* starts at the latest jump or late tick in the chain of ticks whose arrivals
  are less than stale_after_ms apart, or at the chain's first tick; closed, "recovered" once
  hysteresis_ms have passed since then; before that open, with reason "jump" or "late_feed" if the
  run started at such a tick, "startup" if the chain reaches back to the very first tick, else
  "stale_feed";
- a jump: a tick whose price differs by more than jump_bps of an earlier accepted tick's price
  within jump_window_ms of exchange time; ticks older than the newest are not accepted;
- a late tick: not a jump, and it arrived more than max_tick_age_ms after its own exchange time
  (when the age is judged at all: max_tick_age_ms > 0 and judge_tick_age);
- override open/closed wins, reason "override"; auto shows the model.

Time is advanced either the way the actor does it (calling `on_time` at each `next_deadline_ms`)
or lazily (one late call); both must give the same states, and each deadline-driven change must be
stamped with the instant the model changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tap.breaker import Breaker
from tap.config import BreakerConfig
from tap.messages import BreakerChanged, BreakerMode

START_MS = 1_700_000_000_000
PRICE_BASE = 10_000_000


@dataclass(frozen=True)
class Seen:
    arrival: int
    ts: int
    price: int
    jump: bool
    late: bool


class Model:
    def __init__(self, cfg: BreakerConfig, judge_tick_age: bool) -> None:
        self.cfg = cfg
        self.judge_tick_age = judge_tick_age
        self.ticks: list[Seen] = []
        self.mode: BreakerMode = "auto"

    def tick(self, arrival: int, ts: int, price: int) -> None:
        if self.ticks and ts < max(t.ts for t in self.ticks):
            return
        jump = any(
            ts - t.ts <= self.cfg.jump_window_ms
            and abs(price - t.price) * 10_000 > self.cfg.jump_bps * t.price
            for t in self.ticks
        )
        max_age = self.cfg.max_tick_age_ms if self.judge_tick_age else 0
        late = max_age > 0 and arrival - ts > max_age
        self.ticks.append(Seen(arrival, ts, price, jump, late))

    def run_start(self, now: int) -> tuple[int, str] | None:
        """(start of the current run of fresh ticks, the reason it is not yet closed), or None
        when the feed is not fresh at `now`."""
        ticks = [t for t in self.ticks if t.arrival <= now]
        if not ticks or now - ticks[-1].arrival >= self.cfg.stale_after_ms:
            return None
        first = len(ticks) - 1
        while (
            first > 0 and ticks[first].arrival - ticks[first - 1].arrival < self.cfg.stale_after_ms
        ):
            first -= 1
        restarts = [t for t in ticks[first:] if t.jump or t.late]
        if restarts:
            return restarts[-1].arrival, "jump" if restarts[-1].jump else "late_feed"
        return ticks[first].arrival, "startup" if first == 0 else "stale_feed"

    def auto(self, now: int) -> tuple[str, str]:
        if not [t for t in self.ticks if t.arrival <= now]:
            return "open", "startup"
        run = self.run_start(now)
        if run is None:
            return "open", "stale_feed"
        start, why = run
        if now - start >= self.cfg.hysteresis_ms:
            return "closed", "recovered"
        return "open", why

    def published(self, now: int) -> tuple[str, str]:
        return (self.mode, "override") if self.mode != "auto" else self.auto(now)


configs = st.sampled_from(
    [
        BreakerConfig(
            stale_after_ms=100,
            hysteresis_ms=300,
            jump_bps=500,
            jump_window_ms=50,
            max_tick_age_ms=60,
        ),
        BreakerConfig(
            stale_after_ms=100,
            hysteresis_ms=50,
            jump_bps=200,
            jump_window_ms=80,
            max_tick_age_ms=150,
        ),
        BreakerConfig(
            stale_after_ms=100, hysteresis_ms=100, jump_bps=500, jump_window_ms=0, max_tick_age_ms=0
        ),
        BreakerConfig(
            stale_after_ms=100, hysteresis_ms=0, jump_bps=500, jump_window_ms=50, max_tick_age_ms=1
        ),
    ]
)


class BreakerMachine(RuleBasedStateMachine):
    @initialize(cfg=configs, judge_tick_age=st.booleans())
    def start(self, cfg: BreakerConfig, judge_tick_age: bool) -> None:
        self.cfg = cfg
        self.breaker = Breaker(cfg, judge_tick_age=judge_tick_age)
        self.model = Model(cfg, judge_tick_age)
        self.now = START_MS
        self.ts = START_MS  # exchange time of the newest tick sent
        self.published: tuple[str, str] = ("open", "startup")

    def absorb(self, changes: list[BreakerChanged]) -> None:
        """Every change is a real change, in time order, never from the future."""
        for change in changes:
            assert (change.state, change.reason) != self.published, change
            assert change.at <= self.now
            self.published = (change.state, change.reason)

    @rule(
        burst=st.lists(
            st.tuples(
                st.one_of(
                    st.integers(0, 60),
                    st.integers(0, 99),
                    st.sampled_from([99, 100, 101]),
                    st.integers(100, 400),
                ),
                st.one_of(
                    st.integers(-30, 120),
                    st.sampled_from([0, 49, 50, 51, 79, 80, 81]),
                    # stamped this long before its arrival: around each config's age bound
                    st.sampled_from([0, 1, 2, 59, 60, 61, 149, 150, 151]).map(lambda a: ("age", a)),
                ),
                st.one_of(
                    st.just(0),
                    st.sampled_from([500, 501, -500, -501, 200, 201, -200, -201, 490, -195]),
                    st.integers(-1500, 1500),
                ),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def ticks(self, burst: list[tuple[int, int | tuple[str, int], int]]) -> None:
        """Ticks, each `after` ms after the previous step, at a price `move_bps` from a fixed
        base: every price is near the base, so exact jump boundaries (200 or 500 bps of the base)
        come up often. A tick's exchange time moves by a step of its own (so ages drift) or the
        tick arrives exactly a given age after it (so age bounds come up often). The invariants are
        checked after every tick of the burst."""
        for after, ts_step, move_bps in burst:
            self.now += after
            if isinstance(ts_step, tuple):  # exactly this old on arrival, never going back
                self.ts = max(self.ts, self.now - ts_step[1])
                self.now = self.ts + ts_step[1]
            else:
                self.ts += ts_step
            price = PRICE_BASE + PRICE_BASE * move_bps // 10_000
            self.model.tick(self.now, self.ts, price)
            self.absorb(self.breaker.on_tick(self.ts, price, self.now))
            self.agrees_with_the_model()
            self.never_closed_without_hysteresis_of_fresh_ticks()
            self.open_whenever_stale()
            self.nothing_changes_before_the_next_deadline()

    @rule(
        dt=st.one_of(
            st.integers(0, 60),
            st.integers(0, 400),
            st.sampled_from([1, 49, 50, 99, 100, 299, 300, 301]),
        ),
        like_the_actor=st.booleans(),
    )
    def wait(self, dt: int, like_the_actor: bool) -> None:
        target = self.now + dt
        changes: list[BreakerChanged] = []
        if like_the_actor:
            while (due := self.breaker.next_deadline_ms()) is not None and due <= target:
                assert due > self.now, "a deadline is always in the future"
                self.now = due
                changes += self.breaker.on_time(due)
        self.now = target
        changes += self.breaker.on_time(target)
        if self.model.mode == "auto":
            for change in changes:  # each change happened when the rules say it did
                assert self.model.auto(change.at) == (change.state, change.reason), change
                assert self.model.auto(change.at - 1) != (change.state, change.reason), change
        else:
            assert changes == []
        self.absorb(changes)

    @rule(mode=st.sampled_from(["open", "closed", "auto", "auto", "auto"]))
    def override(self, mode: BreakerMode) -> None:
        self.model.mode = mode
        self.absorb(self.breaker.override(mode, self.now))

    @precondition(lambda self: hasattr(self, "breaker"))
    @invariant()
    def agrees_with_the_model(self) -> None:
        assert (self.breaker.auto_state, self.breaker.auto_reason) == self.model.auto(self.now)
        assert (self.breaker.state, self.breaker.reason) == self.model.published(self.now)
        assert (self.breaker.state, self.breaker.reason) == self.published

    @precondition(lambda self: hasattr(self, "breaker"))
    @invariant()
    def never_closed_without_hysteresis_of_fresh_ticks(self) -> None:
        if self.breaker.state == "closed" and self.breaker.mode != "closed":
            run = self.model.run_start(self.now)
            assert run is not None and self.now - run[0] >= self.cfg.hysteresis_ms

    @precondition(lambda self: hasattr(self, "breaker"))
    @invariant()
    def open_whenever_stale(self) -> None:
        if self.model.run_start(self.now) is None and self.breaker.mode != "closed":
            assert self.breaker.state == "open"

    @precondition(lambda self: hasattr(self, "breaker"))
    @invariant()
    def override_is_respected(self) -> None:
        if self.breaker.mode != "auto":
            assert (self.breaker.state, self.breaker.reason) == (self.breaker.mode, "override")

    @precondition(lambda self: hasattr(self, "breaker"))
    @invariant()
    def nothing_changes_before_the_next_deadline(self) -> None:
        if self.model.mode != "auto":
            assert self.breaker.next_deadline_ms() is None
            return
        due = self.breaker.next_deadline_ms()
        quiet_until = self.now + 10 * (self.cfg.stale_after_ms + self.cfg.hysteresis_ms)
        last_quiet = quiet_until if due is None else due - 1
        assert due is None or due > self.now
        assert self.model.auto(last_quiet) == self.model.auto(self.now)


BreakerMachine.TestCase.settings = settings(
    BreakerMachine.TestCase.settings, stateful_step_count=60
)
test_breaker_machine = BreakerMachine.TestCase
