"""The load generator's own parts: histogram, scenarios, open-loop schedule, thresholds, capacity
search, bookkeeping, HTTP client — and the bench servers and naive peer actually answering.

Pure parts are tested directly (Hypothesis where a property says more than examples); timed
parts run under `autojump_clock`; the servers are real subprocesses on loopback (marked slow).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st

from loadgen.generator.capacity import CapacitySearch
from loadgen.generator.engine import Dispatcher, SlotPool
from loadgen.generator.h1 import HttpConnection
from loadgen.generator.histogram import Histogram
from loadgen.generator.market import CellView, MarketSpec, MarketView
from loadgen.generator.recorder import ConfirmationTracker, Recorder
from loadgen.generator.scenario import (
    SCENARIO_DIR,
    ClientSpec,
    ScenarioError,
    Stage,
    Thresholds,
    decode_scenario,
    load_scenario,
    parse_duration,
)
from loadgen.generator.schedule import Schedule
from loadgen.generator.thresholds import evaluate, passed
from loadgen.generator.vu import Target
from loadgen.peers.targets import start_bench_server, start_naive_server, tap_environment

# ── histogram ────────────────────────────────────────────────────────────────────────────────


def test_histogram_counts_small_values_exactly() -> None:
    h = Histogram(precision_bits=7)
    for v in range(128):
        h.record(v)
    assert h.percentile(50) == 63
    assert h.percentile(100) == 127
    assert (h.min, h.max, h.count) == (0, 127, 128)


@given(st.integers(min_value=0, max_value=10**9))
def test_histogram_reports_a_value_within_its_precision_and_never_below_it(v: int) -> None:
    h = Histogram(precision_bits=7)
    h.record(v)
    i = h.index_of(v)
    assert h.lowest_equivalent(i) <= v <= h.highest_equivalent(i)
    assert h.highest_equivalent(i) - h.lowest_equivalent(i) <= max(0, v) / 64
    assert h.percentile(99) == v  # capped at the exact max


@given(st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=300))
def test_histogram_percentiles_bound_the_true_ones_from_above(values: list[int]) -> None:
    h = Histogram()
    for v in values:
        h.record(v)
    ordered = sorted(values)
    for q in (50, 90, 99, 100):
        true = ordered[max(1, math.ceil(q / 100 * len(values))) - 1]
        got = h.percentile(q)
        assert true <= got <= true + true / 64 + 1


def test_histogram_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    values = [int(rng.expovariate(1 / 5000)) for _ in range(2000)]
    one, a, b = Histogram(), Histogram(), Histogram()
    for i, v in enumerate(values):
        one.record(v)
        (a if i % 2 else b).record(v)
    a.merge(b)
    assert a.summary_ms() == one.summary_ms()
    assert Histogram.from_json(a.to_json()).summary_ms() == one.summary_ms()


def test_empty_histogram_reports_zero() -> None:
    assert Histogram().percentile(99) == 0
    assert Histogram().summary_ms()["count"] == 0


# ── scenarios ────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (7, 7.0)],
)
def test_durations_read_in_k6_units(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1s", "s"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ScenarioError):
        parse_duration(text)


def test_every_shipped_scenario_loads() -> None:
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
    assert {"smoke", "steady-3k", "spike", "soak"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert Schedule(scenario.stages).total > 0


def test_steady_3k_holds_three_thousand_per_second() -> None:
    s = load_scenario("steady-3k")
    sched = Schedule(s.stages)
    assert max(seg.r1 for seg in sched.segments) == 3000


MINIMAL = """
name = "t"
[[stages]]
kind = "steady"
duration = "1s"
target = 5
"""


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("[client]\nvus = 0\n", "client.vus"),
        ("[client]\nvus = 2\nmarket_data_vus = 3\n", "market_data_vus"),
        ("[client]\nwebsockets = 1\n", "websockets"),
        ('[[stages]]\nkind = "ramp"\nduration = "1s"\n', "needs a target"),
        ('[[stages]]\nkind = "hover"\nduration = "1s"\ntarget = 1\n', "hover"),
        ('[thresholds.routes."*"]\nerror_rate = 2.0\n', "error_rate"),
        ("[client]\ncolumns = -1\n", "client.columns"),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_key(extra: str, needle: str) -> None:
    with pytest.raises(ScenarioError, match=needle):
        decode_scenario(MINIMAL + extra)


def test_a_scenario_without_stages_is_refused() -> None:
    with pytest.raises(ScenarioError, match="stages"):
        decode_scenario('name = "t"\n')


# ── open-loop schedule ───────────────────────────────────────────────────────────────────────


def stages(*specs: tuple[str, float, float | None]) -> list[Stage]:
    return [Stage(kind=k, duration=d, target=t) for k, d, t in specs]  # type: ignore[arg-type]


def test_a_steady_stage_sends_rate_times_duration_evenly_spaced() -> None:
    due = list(Schedule(stages(("steady", 4, 250))).uniform())
    assert len(due) == 1000
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(due)}
    assert gaps == {0.004}


def test_a_ramp_sends_the_area_under_its_rate_with_growing_density() -> None:
    due = list(Schedule(stages(("ramp", 10, 100))).uniform())
    assert len(due) == 500  # (0 + 100) / 2 · 10
    first_half = sum(1 for t in due if t < 5)
    assert first_half == 125  # a quarter of the area lies under the first half of a ramp up


def test_spike_jumps_and_the_next_ramp_starts_from_the_spike() -> None:
    sched = Schedule(stages(("steady", 2, 10), ("spike", 1, 100), ("ramp", 2, 0)))
    assert sched.rate_at(1.99) == 10
    assert sched.rate_at(2.0) == 100
    assert sched.rate_at(4.0) == pytest.approx(50)
    assert sched.total == pytest.approx(20 + 100 + 100)


def test_a_stage_without_target_keeps_the_previous_rate() -> None:
    sched = Schedule(stages(("ramp", 1, 40), ("soak", 3, None)))
    assert sched.rate_at(2.5) == 40
    assert sched.total == pytest.approx(20 + 120)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ramp", "steady", "spike", "soak"]),
            st.floats(min_value=0.1, max_value=30),
            st.floats(min_value=0, max_value=5000),
        ),
        min_size=1,
        max_size=5,
    ),
    st.floats(min_value=0, max_value=1),
)
def test_send_times_invert_the_expected_count(
    specs: list[tuple[str, float, float]], where: float
) -> None:
    sched = Schedule(stages(*specs))
    n = where * sched.total
    t = sched.time_of(n)
    assert 0 <= t <= sched.duration
    assert sched.expected_count(t) == pytest.approx(n, rel=1e-6, abs=1e-6)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ramp", "steady", "spike"]),
            st.floats(min_value=0.1, max_value=5),
            st.floats(min_value=0, max_value=400),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_uniform_send_times_are_ordered_in_range_and_as_many_as_expected(
    specs: list[tuple[str, float, float]],
) -> None:
    sched = Schedule(stages(*specs))
    due = list(sched.uniform())
    assert all(a <= b for a, b in itertools.pairwise(due))
    assert all(0 <= t <= sched.duration for t in due)
    assert abs(len(due) - sched.total) <= len(sched.segments) + 1


def test_poisson_send_times_average_the_expected_count() -> None:
    sched = Schedule(stages(("steady", 20, 500)))
    due = list(sched.poisson(random.Random(3)))
    assert abs(len(due) - 10_000) < 5 * math.sqrt(10_000)
    assert all(a <= b for a, b in itertools.pairwise(due))


# ── thresholds ───────────────────────────────────────────────────────────────────────────────


def summary_with(p99_ms: float, errors: int, unanswered: int) -> dict[str, object]:
    route = {
        "count": 100,
        "error_rate": errors / 100,
        "server_error_rate": errors / 100,
        "latency": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": p99_ms, "max_ms": p99_ms},
    }
    return {
        "routes": {"POST /api/bets": route, "WS place_bet": dict(route)},
        "bets": {"accepted": 100, "unanswered": unanswered, "confirmation_latency": {"count": 0}},
        "generator": {"shortfall": {}},
    }


THRESHOLDS = msgspec.convert(
    {
        "routes": {"POST /api/bets": {"p99_ms": 100}, "*": {"server_error_rate": 0.0}},
        "max_unanswered": 0,
    },
    Thresholds,
)


def test_thresholds_pass_when_every_limit_holds() -> None:
    verdicts = evaluate(THRESHOLDS, summary_with(50, 0, 0))
    assert passed(verdicts)
    # "*" applies to each route that was exercised
    assert {(v.subject, v.metric) for v in verdicts} == {
        ("POST /api/bets", "p99_ms"),
        ("POST /api/bets", "server_error_rate"),
        ("WS place_bet", "server_error_rate"),
        ("bets", "unanswered"),
    }


@pytest.mark.parametrize(
    ("p99", "errors", "unanswered", "broken"),
    [
        (150, 0, 0, ("POST /api/bets", "p99_ms")),
        (50, 1, 0, ("WS place_bet", "server_error_rate")),
        (50, 0, 2, ("bets", "unanswered")),
    ],
)
def test_a_broken_threshold_fails_the_run(
    p99: float, errors: int, unanswered: int, broken: tuple[str, str]
) -> None:
    verdicts = evaluate(THRESHOLDS, summary_with(p99, errors, unanswered))
    assert not passed(verdicts)
    assert broken in {(v.subject, v.metric) for v in verdicts if not v.ok}


def test_a_threshold_on_a_route_that_saw_nothing_fails() -> None:
    t = msgspec.convert({"routes": {"GET /nowhere": {"p99_ms": 1}}}, Thresholds)
    [verdict] = [v for v in evaluate(t, summary_with(1, 0, 0)) if v.subject == "GET /nowhere"]
    assert verdict.actual is None and not verdict.ok


@pytest.mark.parametrize(
    "bets",
    [None, {"accepted": 0, "unanswered": 0, "confirmation_latency": {"count": 0}}],
    ids=["no bet figures", "no bet accepted"],
)
def test_an_unanswered_threshold_with_no_bets_to_judge_fails(bets: object) -> None:
    t = msgspec.convert({"max_unanswered": 0}, Thresholds)
    summary = summary_with(1, 0, 0)
    if bets is None:
        del summary["bets"]
    else:
        summary["bets"] = bets
    [verdict] = evaluate(t, summary)
    assert (verdict.subject, verdict.metric) == ("bets", "unanswered")
    assert verdict.actual is None and not verdict.ok
    assert not passed([verdict])


# ── capacity search ──────────────────────────────────────────────────────────────────────────


@given(st.floats(min_value=50, max_value=50_000), st.floats(min_value=20, max_value=5000))
def test_capacity_search_brackets_the_true_limit(limit: float, start: float) -> None:
    search = CapacitySearch(start, precision=0.1, max_probes=40)
    while (rate := search.next_rate()) is not None:
        search.observe(rate, rate <= limit)
    assert search.best <= limit
    if search.best:
        fail = search.lowest_failure
        assert fail is None or fail > limit
        assert fail is None or (fail - search.best) / search.best <= 0.1 + 2 / search.best


def test_capacity_search_reports_zero_when_nothing_passes() -> None:
    search = CapacitySearch(400, max_probes=20)
    while (rate := search.next_rate()) is not None:
        search.observe(rate, False)
    assert search.best == 0
    assert len(search.probes) < 20


def test_capacity_search_spends_no_more_than_its_probe_budget() -> None:
    search = CapacitySearch(100, max_probes=3)
    while (rate := search.next_rate()) is not None:
        search.observe(rate, True)
    assert [p.rate for p in search.probes] == [100, 200, 400]


def test_a_top_rate_that_fails_its_repeat_is_not_the_sustained_capacity() -> None:
    # 900/s passes once by luck and fails when repeated: the search settles below it, on a
    # rate that passed twice.
    search = CapacitySearch(400, growth=1.5, max_probes=8, confirmations=1)
    first_900 = True
    while (rate := search.next_rate()) is not None:
        if rate == 900 and first_900:
            first_900 = False
            search.observe(rate, True)
        else:
            search.observe(rate, rate <= 800)
    assert [p.rate for p in search.probes if p.rate == 900] == [900, 900]
    assert search.sustained <= 800
    assert search.sustained >= 600
    assert search.passes_at(search.sustained) >= 2


@given(st.floats(min_value=50, max_value=50_000), st.floats(min_value=20, max_value=5000))
def test_with_confirmations_the_sustained_rate_passed_twice_and_brackets_the_limit(
    limit: float, start: float
) -> None:
    search = CapacitySearch(start, precision=0.1, max_probes=40, confirmations=1)
    while (rate := search.next_rate()) is not None:
        search.observe(rate, rate <= limit)
    assert search.sustained == search.best <= limit
    if search.sustained:
        assert search.passes_at(search.sustained) == 2


def test_confirmations_may_exceed_the_search_budget_but_only_by_their_own() -> None:
    search = CapacitySearch(100, max_probes=3, confirmations=1)
    while (rate := search.next_rate()) is not None:
        search.observe(rate, True)
    assert [p.rate for p in search.probes] == [100, 200, 400, 400]
    assert search.sustained == 400


# ── bookkeeping ──────────────────────────────────────────────────────────────────────────────


def test_a_confirmation_that_overtakes_its_202_still_counts() -> None:
    t = ConfirmationTracker()
    t.answered("b1", "confirmed", None, at=1.0)
    t.accepted("b1", at=1.1)
    assert (t.confirmed, t.unanswered, len(t.early)) == (1, 0, 0)


def test_a_bet_never_answered_is_reported_by_id() -> None:
    t = ConfirmationTracker()
    t.accepted("b1", at=1.0, owner=3)
    t.accepted("b2", at=1.0, owner=4)
    t.answered("b2", "rejected", "insufficient_funds", at=1.5)
    s = t.summary()
    assert (s["unanswered"], s["unanswered_bet_ids"]) == (1, ["b1"])
    assert s["rejected_reasons"] == {"insufficient_funds": 1}
    assert t.pending_of(3) == ["b1"]


def test_a_probe_window_counts_only_its_own_bets_and_a_missing_answer_as_slowest() -> None:
    t = ConfirmationTracker()
    t.accepted("old", at=1.0)  # before the window: not the probe's
    t.start_window(10.0)
    for i in range(99):
        t.accepted(f"b{i}", at=10.0 + i / 100)
        t.answered(f"b{i}", "confirmed", None, at=10.0 + i / 100 + 0.004)
    t.answered("old", "confirmed", None, at=11.0)
    w = t.window_summary()
    assert (w["accepted"], w["answered"], w["unanswered"]) == (99, 99, 0)
    assert 3.9 <= w["p99_ms"] <= 4.1
    t.accepted("late", at=12.0)
    t.accepted("later", at=12.0)
    w = t.window_summary()
    # 2 of 101 unanswered: the 99th percentile is among them, so it is unknown (too slow)
    assert (w["unanswered"], w["p99_ms"]) == (2, None)


def test_an_answer_learnt_over_http_is_counted_apart() -> None:
    t = ConfirmationTracker()
    t.accepted("b1", at=1.0)
    t.resync("b1", "confirmed", None, at=2.0)
    t.resync("b9", "confirmed", None, at=2.0)  # not ours: ignored
    assert (t.confirmed, t.resynced, t.unanswered) == (1, 1, 0)


def test_the_recorder_ignores_requests_due_during_warm_up_and_classifies_errors() -> None:
    r = Recorder(measure_from=10.0)
    r.record("x", intended=9.9, done=10.5, status=202)
    r.record("x", intended=10.0, done=10.002, status=202)
    r.record("x", intended=10.1, done=10.2, status=422, code="cell_not_placeable")
    r.record("x", intended=10.2, done=12.2, status=0, code="timeout")
    r.record("x", intended=10.3, done=10.4, status=503, code="overloaded")
    stats = r.routes["x"]
    assert (stats.count, stats.errors, stats.server_errors) == (4, 3, 2)
    assert stats.hist.min == 2000  # µs from the *intended* time


# ── open-loop executor ───────────────────────────────────────────────────────────────────────


async def test_requests_waiting_for_a_busy_slot_are_timed_from_when_they_were_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()

    async def slow(slot: str, due: float) -> None:
        await trio.sleep(1.0)  # the server takes 1 s per request
        recorder.record("r", due, trio.current_time(), 202)

    async with trio.open_nursery() as nursery:
        pool = SlotPool(["a", "b"], slow, recorder)
        pool.bind(nursery)
        t0 = trio.current_time()
        for _ in range(4):
            pool.submit(t0)  # four requests due at once, two clients
        await pool.wait_idle()
    h = recorder.routes["r"].hist
    # A closed-loop generator would report 1 s for all four; the last two waited 1 s first.
    assert (h.min, h.max, h.count) == (1_000_000, 2_000_000, 4)


async def test_the_dispatcher_hands_over_every_arrival_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[float] = []
    d = Dispatcher()
    sched = Schedule(stages(("ramp", 2, 100), ("steady", 1, 100)))
    t0 = trio.current_time()
    await d.drive(sched.uniform(), t0, seen.append)
    assert len(seen) == d.dispatched == 200
    assert d.lag.max == 0
    assert seen == sorted(seen)


# ── the market view ──────────────────────────────────────────────────────────────────────────


def cell(col: int, row: int, mult: int = 30_000, placeable: bool = True) -> CellView:
    return CellView(
        cell_id=f"BTC-USD:{col}:{row}",
        t_start=col * 5000,
        t_end=col * 5000 + 5000,
        multiplier_bps=mult,
        placeable=placeable,
    )


def test_only_cells_that_will_still_be_placeable_are_offered() -> None:
    view = MarketView(MarketSpec(symbol="BTC-USD"), margin_ms=2000)
    now = 1000 * 5000 + 4000  # late in column 1000
    grid = {(col, row): cell(col, row) for col in range(1001, 1013) for row in range(100, 116)}
    grid[1010, 107] = cell(1010, 107, placeable=False)
    grid[1005, 105] = cell(1005, 105, mult=10_600)  # just above the minimum: will slip under
    view.update(now, list(grid.values()))
    offered = view.candidates(now)
    cols = {c.t_start // 5000 for c in offered}
    rows = {int(c.cell_id.rsplit(":", 1)[1]) for c in offered}
    # col 1001 is in the lockout, 1002 will be within the margin; edge rows may scroll away
    assert min(cols) == 1003 and max(cols) == 1012
    assert rows == set(range(102, 114))
    assert "BTC-USD:1005:105" not in {c.cell_id for c in offered}
    assert "BTC-USD:1010:107" not in {c.cell_id for c in offered}
    assert view.still_placeable("BTC-USD:1003:104", 1003 * 5000, now)
    assert not view.still_placeable("BTC-USD:1003:104", 1003 * 5000, 1002 * 5000)


@given(now=st.integers(min_value=1000 * 5000, max_value=1000 * 5000 + 5 * 5000))
def test_near_columns_bound_how_long_a_bet_waits_for_its_settlement(now: int) -> None:
    view = MarketView(MarketSpec(symbol="BTC-USD"), margin_ms=2000, columns=2)
    grid = [cell(col, row) for col in range(1001, 1020) for row in range(100, 116)]
    view.update(now, grid)
    offered = view.candidates(now)
    cols = sorted({c.t_start // 5000 for c in offered})
    assert len(cols) == 2 and cols[1] == cols[0] + 1  # the nearest two placeable columns
    assert cols[0] * 5000 == view.earliest_start_ms(now)
    # signed now and sent up to margin_ms later, every offered bet settles within the horizon
    assert max(c.t_end for c in offered) - now <= view.settle_horizon_ms() == 22_000
    everything = MarketView(MarketSpec(symbol="BTC-USD"), margin_ms=2000)
    everything.update(now, grid)
    assert len(everything.candidates(now)) > len(offered)
    assert everything.settle_horizon_ms() == 2000 + (1 + 1 + 12) * 5000


class _Meter:
    def __init__(self) -> None:
        self.restarts: list[float] = []

    def restart(self) -> None:
        self.restarts.append(trio.current_time())

    def overall(self) -> dict[str, Any]:
        return dict.fromkeys(
            (
                "cpu_pct",
                "signer_cpu_pct",
                "server_cpu_pct",
                "cpu_wait_pct",
                "server_cpu_wait_pct",
            ),
            None,
        ) | {"server_cpu_s": 1.0}


class _SettlingWorkload:
    route = "POST /api/bets"
    tracker = None
    steady_s = 7.0  # a bet settles up to 7 s after it is placed
    window_s = 5.0  # one column

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.due: list[float] = []

    @property
    def slots(self) -> list[Any]:
        return list(range(10))

    async def before_probe(self, rate: float) -> None:
        return None

    async def settle(self, within: float) -> None:
        return None

    async def fire(self, slot: Any, due: float) -> None:
        self.due.append(due)
        self.recorder.record(self.route, due, trio.current_time() + 0.001, 202)


async def test_a_probe_of_settling_bets_warms_up_past_their_settlement_and_measures_a_column(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from loadgen.benches import bench

    meter = _Meter()
    work = _SettlingWorkload()
    async with trio.open_nursery() as nursery:
        prober = bench.Prober(nursery, bench.QUICK, meter, lambda _: None)  # type: ignore[arg-type]
        started = trio.current_time()
        result = await prober.probe(work, 100.0)
    # QUICK's own warm-up (0.5 s) and window (2 s) are shorter than the workload needs
    assert (result["warmup_s"], result["measure_s"]) == (7.0, 5.0)
    assert len(work.due) == 1200  # 12 s at 100/s
    assert result["latency"]["count"] == 500  # only the measured window's 5 s
    # CPU is read over the measured window: the meter restarted when it began, and the
    # server's CPU second is divided by that window's 500 requests
    assert meter.restarts[-1] - started == pytest.approx(7.02, abs=0.01)
    assert result["server_cpu_ms_per_req"] == pytest.approx(2.0, rel=0.01)


# ── the seam to tap ──────────────────────────────────────────────────────────────────────────


def test_config_overrides_become_tap_environment_variables(tmp_path: Path) -> None:
    env = tap_environment(
        9123,
        tmp_path,
        {
            "limits": {"rate_per_s": 1000.0, "burst": 50},
            "payments": {"mock_deposits": True},
            "markets": [{"rows": 32, "symbol": "BTC-USD"}],
            "server": {"cors_origins": ["http://a"]},
        },
    )
    assert env["TAP__SERVER__PORT"] == "9123"
    assert env["TAP__SERVER__DB_PATH"] == str(tmp_path.resolve() / "tap.db")
    assert env["TAP__LIMITS__RATE_PER_S"] == "1000.0"
    assert env["TAP__LIMITS__BURST"] == "50"
    assert env["TAP__PAYMENTS__MOCK_DEPOSITS"] == "true"
    assert env["TAP__MARKETS__0__ROWS"] == "32"
    assert env["TAP__MARKETS__0__SYMBOL"] == '"BTC-USD"'
    assert env["TAP__SERVER__CORS_ORIGINS"] == '["http://a"]'


def test_tap_reads_the_seam_environment_as_intended(tmp_path: Path) -> None:
    from tap.config import load_config

    env = tap_environment(
        9123, tmp_path, {"limits": {"rate_per_s": 1000.0}, "markets": [{"rows": 32}]}
    )
    cfg = load_config(None, env)
    assert (cfg.server.port, cfg.limits.rate_per_s, cfg.markets[0].rows) == (9123, 1000.0, 32)


# ── the HTTP/1.1 client against a scripted server ────────────────────────────────────────────


async def scripted_server(
    nursery: trio.Nursery, answers: list[bytes], close_after: bool = False
) -> int:
    """A TCP server answering each request (up to the blank line + body) with the next script."""

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        while answers:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            buf = buf[length:]
            await stream.send_all(answers.pop(0))
            if close_after:
                await stream.aclose()
                return

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return int(listeners[0].socket.getsockname()[1])


async def test_the_http_client_reads_chunked_bodies_and_reuses_the_connection() -> None:
    answers = [
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ]
    async with trio.open_nursery() as nursery:
        port = await scripted_server(nursery, answers)
        conn = HttpConnection("127.0.0.1", port)
        first = await conn.request("POST", "/api/bets", b"{}")
        second = await conn.request("GET", "/x")
        assert (first.status, first.body) == (202, b"hello")
        assert (second.status, second.body) == (200, b"abcde")
        assert conn.connects == 1
        conn.close()
        nursery.cancel_scope.cancel()


async def test_the_http_client_reconnects_when_the_server_closed_the_idle_connection() -> None:
    answers = [
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
    ]
    async with trio.open_nursery() as nursery:
        port = await scripted_server(nursery, answers, close_after=True)
        conn = HttpConnection("127.0.0.1", port)
        assert (await conn.request("POST", "/a", b"1")).status == 202
        assert (await conn.request("POST", "/a", b"2")).status == 202  # resent on a new one
        assert conn.connects == 2
        conn.close()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("idle_limit", "connects"), [(25.0, 1), (4.0, 2)])
async def test_the_http_client_reuses_an_idle_connection_only_within_its_keep_alive(
    idle_limit: float, connects: int
) -> None:
    """`[client] keep_alive` (issue 12): a user who taps every 10 s keeps its connection against
    tap (30 s keep-alive, the bench reuses for 25 s) and reconnects against Hypercorn's 5 s."""
    answers = [b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"] * 2
    async with trio.open_nursery() as nursery:
        port = await scripted_server(nursery, answers)
        conn = Target(f"http://127.0.0.1:{port}").connection(idle_limit)
        assert (await conn.request("POST", "/a", b"1")).status == 202
        conn._last_used = trio.current_time() - 10.0  # idle for 10 s
        assert (await conn.request("POST", "/a", b"2")).status == 202
        assert conn.connects == connects
        conn.close()
        nursery.cancel_scope.cancel()


def test_the_bench_reuses_taps_connections_for_less_than_taps_keep_alive() -> None:
    from loadgen.benches import bench

    assert bench.TAP_CLIENT_KEEP_ALIVE_S < bench.TAP_KEEP_ALIVE_S
    assert bench.TAP_BENCH_OVERRIDES["server"]["keep_alive_timeout_s"] == bench.TAP_KEEP_ALIVE_S
    spec = bench.bench_spec(bench.QUICK, 10, "http", bench.TAP_CLIENT_KEEP_ALIVE_S)
    assert parse_duration(spec.keep_alive) == bench.TAP_CLIENT_KEEP_ALIVE_S
    assert parse_duration(ClientSpec().keep_alive) == 4.0  # under Hypercorn's default 5 s


# ── the bench servers and the naive peer, as real processes ─────────────────────────────────


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bare", "quart"])
async def test_the_http_baselines_answer_a_bet_shaped_request_with_202(
    kind: str, tmp_path: Path
) -> None:
    from loadgen.benches.bench import bet_shaped_body

    async with start_bench_server(kind, tmp_path) as server:
        conn = HttpConnection(server.host, server.port)
        resp = await conn.request("POST", "/api/bets", bet_shaped_body())
        conn.close()
    assert resp.status == 202
    assert msgspec.json.decode(resp.body) == {"status": "pending"}


@pytest.mark.slow
async def test_the_same_shape_ceiling_pushes_one_frame_per_202_to_the_bearers_websocket(
    tmp_path: Path,
) -> None:
    from loadgen.benches.bench import bet_shaped_body

    async with start_bench_server("shape", tmp_path) as server:
        url = f"ws://{server.host}:{server.port}/ws"
        async with (
            trio_websocket.open_websocket_url(url) as mine,
            trio_websocket.open_websocket_url(url) as other,
        ):
            for ws, token in ((mine, "me"), (other, "you")):
                await ws.send_message(f'{{"type":"auth","token":"{token}"}}')
                assert msgspec.json.decode(await ws.get_message()) == {"type": "ready"}
            conn = HttpConnection(server.host, server.port)
            headers = b"Content-Type: application/json\r\nAuthorization: Bearer me\r\n"
            ids = []
            for _ in range(2):
                resp = await conn.request("POST", "/api/bets", bet_shaped_body(), headers)
                assert resp.status == 202
                ids.append(msgspec.json.decode(resp.body)["bet_id"])
            conn.close()
            frames = [msgspec.json.decode(await mine.get_message()) for _ in ids]
            assert [(f["type"], f["bet"]["bet_id"]) for f in frames] == [
                ("bet_confirmed", i) for i in ids
            ]
            with trio.move_on_after(0.3):
                await other.get_message()
                pytest.fail("a frame went to another client's WebSocket")


@pytest.mark.slow
async def test_the_websocket_echo_sends_every_frame_back(tmp_path: Path) -> None:
    async with start_bench_server("echo", tmp_path) as server:
        url = f"ws://{server.host}:{server.port}/ws"
        async with trio_websocket.open_websocket_url(url) as ws:
            for i in range(3):
                frame = f'{{"type":"place_bet","req_id":"{i}"}}'
                await ws.send_message(frame)
                assert await ws.get_message() == frame


@pytest.mark.slow
async def test_a_short_run_against_the_naive_peer_confirms_every_accepted_bet(
    tmp_path: Path,
) -> None:
    """The whole client against a server with tap's API shapes: SIWE login, deposit, WebSocket
    subscribe, taps over HTTP and the WebSocket, and every 202 followed to its answer."""
    from loadgen.generator.runner import run_scenario

    scenario = decode_scenario(
        """
        name = "naive-smoke"
        [client]
        vus = 3
        market_data_vus = 1
        transport = "mixed"
        drain = "5s"
        [[stages]]
        kind = "steady"
        duration = "3s"
        target = 6
        [thresholds]
        max_unanswered = 0
        [thresholds.routes."*"]
        server_error_rate = 0.0
        """
    )
    async with start_naive_server(tmp_path) as server:
        report = await run_scenario(scenario, base_url=server.base_url, server=server)
    bets = report["bets"]
    assert report["passed"], report["thresholds"]
    assert bets["accepted"] > 0
    assert bets["confirmed"] == bets["accepted"]
    assert set(report["routes"]) <= {"POST /api/bets", "WS place_bet"}
    assert sum(r["server_errors"] for r in report["routes"].values()) == 0


def test_bench_betpath_admits_every_presigned_bet_and_reports_cpu_per_stage() -> None:
    from loadgen.benches import bench_betpath

    report = bench_betpath.run(quick=True)
    # `place` raises on any refusal, so reaching here means every unique signed bet was admitted.
    assert report["bets_per_round"] > 1000
    for stage in ("admission", "after_commit", "writer"):
        assert report[stage] > 0
    assert report["total_us_per_bet"] >= report["admission"]


# ── CPU of a server's process tree ───────────────────────────────────────────────────────────


@pytest.mark.slow
async def test_a_server_meter_counts_the_cpu_of_its_child_processes() -> None:
    import sys

    from loadgen.generator.cpu import CpuMeter, cpu_seconds, process_tree

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"
    async with trio.open_nursery() as n:
        parent = await n.start(trio.run_process, [sys.executable, "-c", code])
        meter = CpuMeter(parent.pid, tree=True)
        for _ in range(500):  # the child is started within 5 s
            if len(process_tree(parent.pid)) >= 2:
                break
            await trio.sleep(0.01)
        child = process_tree(parent.pid)[1]
        before = cpu_seconds(child) or 0.0
        for _ in range(500):  # and spins 0.15 s of CPU within 5 s
            if (cpu_seconds(child) or 0.0) - before >= 0.15 or parent.returncode is not None:
                break
            await trio.sleep(0.01)
        used = meter.overall_seconds()
        own = cpu_seconds(parent.pid)
    assert used is not None and own is not None
    assert used >= 0.1 > own
