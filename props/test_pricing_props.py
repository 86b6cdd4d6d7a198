"""Properties of `tap.pricing` that hold for every market state, explored by Hypothesis.

A probability stays in [0, 1]; touching a band is monotone in everything that makes it easier
(a nearer band, a wider band, a longer window); a window that starts now is the reflection
principle's closed form; the model is symmetric up/down in log price; and a multiplier is the
exact floor of (1 − edge)/P within [10000 − edge, max].
"""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from tap.pricing import YEAR_MS, multiplier_bps, normal_cdf, touch_probability

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
