"""Properties of `tap.pricing` that hold for every market state, explored by Hypothesis.

A probability stays in [0, 1]; touching a band is monotone in everything that makes it easier
(a nearer band, a wider band, a longer window); a window that starts now is the reflection
principle's closed form; the model is symmetric up/down in log price; and a multiplier is the
exact floor of (1 − edge)/P within [10000 − edge, max].

The quotes' discrete-tick probability agrees with a brute-force simulation of the win rule (ticks,
rounding and all), grows when ticks are added, tends to the continuous touch as ticks get denser,
and prices a cell the same alone or in a grid.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tap.pricing import (
    MAX_WINDOW_STEPS,
    YEAR_MS,
    multiplier_bps,
    normal_cdf,
    tick_touch_probabilities,
    touch_probability,
)

# Numerical noise of Φ₂ is ~1e-15; monotonicity is asserted up to this slack.
EPS = 1e-12

spots = st.floats(min_value=1e4, max_value=1e8)
sigmas = st.floats(min_value=0.05, max_value=3.0)
log_offsets = st.floats(min_value=-0.02, max_value=0.02)  # ±2 %: the grid's whole range and more
log_widths = st.floats(min_value=1e-6, max_value=0.01)
starts = st.integers(min_value=0, max_value=120_000)
lengths = st.integers(min_value=1, max_value=60_000)


def _band(spot: float, offset: float, width: float) -> tuple[float, float]:
    lo = spot * math.exp(offset)
    return lo, lo * math.exp(width)


@given(spots, log_offsets, log_widths, sigmas, starts, lengths)
def test_probability_is_in_the_unit_interval(
    spot: float, offset: float, width: float, sigma: float, t0: int, length: int
) -> None:
    lo, hi = _band(spot, offset, width)
    p = touch_probability(spot, lo, hi, sigma, t0, t0 + length)
    assert 0.0 <= p <= 1.0


@given(spots, st.floats(min_value=0.0, max_value=0.02), st.floats(1e-5, 0.01), log_widths)
def test_a_band_further_away_is_less_likely_to_be_touched(
    spot: float, offset: float, extra: float, width: float
) -> None:
    for direction in (1, -1):
        near = sorted(_band(spot, direction * offset, direction * width))
        far = sorted(_band(spot, direction * (offset + extra), direction * width))
        p_near = touch_probability(spot, near[0], near[1], 0.6, 5_000, 10_000)
        p_far = touch_probability(spot, far[0], far[1], 0.6, 5_000, 10_000)
        assert p_far <= p_near + EPS


@given(spots, log_offsets, log_widths, sigmas, starts, lengths, starts, lengths)
def test_a_window_containing_another_is_at_least_as_likely(
    spot: float,
    offset: float,
    width: float,
    sigma: float,
    t0: int,
    length: int,
    earlier: int,
    longer: int,
) -> None:
    lo, hi = _band(spot, offset, width)
    inner = touch_probability(spot, lo, hi, sigma, t0, t0 + length)
    outer = touch_probability(spot, lo, hi, sigma, max(0, t0 - earlier), t0 + length + longer)
    assert inner <= outer + EPS


@given(spots, log_offsets, log_widths, st.floats(0.0, 0.005), st.floats(0.0, 0.005), sigmas)
def test_a_wider_band_is_at_least_as_likely(
    spot: float, offset: float, width: float, grow_down: float, grow_up: float, sigma: float
) -> None:
    lo, hi = _band(spot, offset, width)
    p = touch_probability(spot, lo, hi, sigma, 5_000, 10_000)
    wider = touch_probability(
        spot, lo * math.exp(-grow_down), hi * math.exp(grow_up), sigma, 5_000, 10_000
    )
    assert p <= wider + EPS


@given(spots, log_offsets, log_widths, sigmas, lengths)
def test_a_window_starting_now_is_the_reflection_closed_form(
    spot: float, offset: float, width: float, sigma: float, t1: int
) -> None:
    lo, hi = _band(spot, offset, width)
    p = touch_probability(spot, lo, hi, sigma, 0, t1)
    if lo <= spot <= hi:
        assert p == 1.0
    else:
        d = math.log(lo / spot) if spot < lo else math.log(spot / hi)
        assert math.isclose(
            p, 2 * normal_cdf(-d / (sigma * math.sqrt(t1 / YEAR_MS))), abs_tol=1e-14
        )


@given(spots, log_offsets, log_widths, sigmas, starts, lengths)
def test_up_and_down_are_symmetric_in_log_price(
    spot: float, offset: float, width: float, sigma: float, t0: int, length: int
) -> None:
    lo, hi = _band(spot, offset, width)
    up = touch_probability(spot, lo, hi, sigma, t0, t0 + length)
    # the mirror image of [lo, hi] through the spot in log space
    down = touch_probability(spot, spot * spot / hi, spot * spot / lo, sigma, t0, t0 + length)
    assert math.isclose(up, down, abs_tol=1e-9)


@given(
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=0, max_value=9_999),
    st.integers(min_value=10_000, max_value=10_000_000),
)
def test_multiplier_is_the_exact_floor_within_its_bounds(p: float, edge: int, cap: int) -> None:
    m = multiplier_bps(p, edge, cap)
    assert 10_000 - edge <= m <= cap
    if p > 0 and m < cap:
        assert Fraction(m) * Fraction(p) <= 10_000 - edge < Fraction(m + 1) * Fraction(p)


# ── the discrete-tick win rule (what the grid quotes) ──────────────────────────────────────────

SPOT = 10_000_345  # 100003.45 USD in increments
ROW = 1_000  # 10.00 USD


def _brute_force_win_rate(
    spot: int,
    lo: int,
    hi: int,
    sigma: float,
    interval_ms: int,
    t0: int,
    t1: int,
    *,
    paths: int,
    seed: int,
) -> tuple[float, float]:
    """The win rule of API.md by brute force: simulate the log price at every tick time
    `k·interval_ms` (k ≥ 1) of the window [t0, t1), round each tick's price to an increment, and
    count the paths with a tick in [lo, hi]. Returns (rate, standard error)."""
    rng = np.random.default_rng(seed)
    ticks = [k * interval_ms for k in range(1, t1 // interval_ms + 2) if t0 <= k * interval_ms < t1]
    x = np.full(paths, math.log(spot))
    hit = np.zeros(paths, dtype=bool)
    at = 0
    for ts in ticks:
        x += sigma * math.sqrt((ts - at) / YEAR_MS) * rng.standard_normal(paths)
        at = ts
        price = np.rint(np.exp(x))
        hit |= (price >= lo) & (price <= hi)
    rate = float(hit.mean())
    return rate, math.sqrt(max(rate * (1 - rate), 1.0 / paths) / paths)


# Each example simulates 20,000 paths; 50 of them cover rows, columns, phases, σ and intervals
# (a fixed count, also under the CI profile: make test's budget for this file is seconds).
@settings(deadline=None, max_examples=50)
@given(
    st.integers(min_value=-8, max_value=7),  # row offset from the spot's row
    st.integers(min_value=1, max_value=12),  # column offset
    st.integers(min_value=0, max_value=4_999),  # as_of inside its column
    st.sampled_from([0.2, 0.6, 1.5, 3.0]),
    st.sampled_from([250, 100, 400, 1000, 40]),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_tick_probability_agrees_with_a_brute_force_simulation_of_the_win_rule(
    row: int, col: int, phase: int, sigma: float, interval: int, seed: int
) -> None:
    lo = (SPOT // ROW + row) * ROW
    t0 = col * 5_000 - phase
    [[p]] = tick_touch_probabilities(SPOT, [(lo, lo + ROW)], sigma, interval, [(t0, t0 + 5_000)])
    rate, se = _brute_force_win_rate(
        SPOT, lo, lo + ROW, sigma, interval, t0, t0 + 5_000, paths=20_000, seed=seed
    )
    # 5 standard errors of the simulation, plus the method's own error: ~3e-5 when exact, up
    # to 1.5e-3 on the coarse schedule of a dense stream (40 ms: 125 ticks per window).
    method = 1.5e-3 if 5_000 // interval > MAX_WINDOW_STEPS else 2e-4
    assert abs(p - rate) <= 5 * se + method, (p, rate, se)


@settings(deadline=None, max_examples=50)  # two grid recursions per example
@given(
    st.integers(min_value=-6, max_value=5),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=0, max_value=4_999),
    st.sampled_from([0.2, 0.6, 3.0]),
    st.sampled_from([500, 250, 200, 100]),
)
def test_more_ticks_on_the_same_schedule_never_lower_the_chance(
    row: int, col: int, phase: int, sigma: float, interval: int
) -> None:
    """Halving the interval adds ticks and keeps every old one: the chance can only grow."""
    lo = (SPOT // ROW + row) * ROW
    t0 = col * 5_000 - phase
    band, window = [(lo, lo + ROW)], [(t0, t0 + 5_000)]
    [[sparse]] = tick_touch_probabilities(SPOT, band, sigma, interval, window)
    [[dense]] = tick_touch_probabilities(SPOT, band, sigma, interval // 2, window)
    assert dense >= sparse - 1e-4


def test_tick_probability_tends_to_the_continuous_touch_as_ticks_get_denser() -> None:
    """In the limit of small intervals the discrete rule is continuous monitoring (API.md v1's
    formula): the gap shrinks like √Δ, and the Broadie–Glasserman–Kou shift predicts it."""
    lo, hi = SPOT + 2_000, SPOT + 3_000  # a band 20 USD above the spot, window 1 s long
    t0, t1 = 2_000, 3_000
    continuous = touch_probability(SPOT, lo - 0.5, hi + 0.5, 0.6, t0, t1)
    gaps = []
    for interval in (16, 4, 1):
        [[p]] = tick_touch_probabilities(SPOT, [(lo, hi)], 0.6, interval, [(t0, t1)])
        shifted = touch_probability(SPOT, lo - 0.5, hi + 0.5, 0.6, t0, t1, monitoring_ms=interval)
        assert p < continuous
        assert abs(p - shifted) < 0.25 * (continuous - p)  # BGK explains most of the gap
        gaps.append(continuous - p)
    assert gaps[0] / gaps[1] == pytest.approx(2.0, rel=0.15)  # √(16/4)
    assert gaps[1] / gaps[2] == pytest.approx(2.0, rel=0.15)  # √(4/1)
    assert gaps[2] < 0.02 * continuous


def test_a_grid_prices_each_cell_as_it_would_alone() -> None:
    """Batching rows and columns is an implementation detail: a cell priced alone from the
    published fields gets the same probability (to rounding noise)."""
    bands = [((SPOT // ROW + r) * ROW, (SPOT // ROW + r + 1) * ROW) for r in range(-8, 8)]
    windows = [(5_000 * k - 1_234, 5_000 * k + 3_766) for k in range(1, 13)]
    grid = tick_touch_probabilities(SPOT, bands, 0.6, 250, windows)
    for i in (0, 5, 8, 15):
        for j in (0, 4, 11):
            [[alone]] = tick_touch_probabilities(SPOT, [bands[i]], 0.6, 250, [windows[j]])
            assert alone == pytest.approx(grid[i][j], rel=1e-9, abs=1e-14)
