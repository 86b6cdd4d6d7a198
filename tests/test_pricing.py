"""Pins `tap.pricing`: the reference points, Φ₂, a seeded Monte Carlo, multipliers and σ."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from tap.config import PricingConfig
from tap.pricing import (
    _GL6,
    _GL12,
    _GL20,
    YEAR_MS,
    EwmaVolatility,
    TickInterval,
    bivariate_normal_cdf,
    multiplier_bps,
    normal_cdf,
    touch_probability,
)

S = 10_000_000  # 100000.00 USD in increments of 0.01
USD = 100
SIGMA = 0.60


# ── reference points (S = 100000.00, σ = 0.60/yr) ────────────────────────────────────────────


@pytest.mark.parametrize(
    ("lo_usd", "hi_usd", "t0_ms", "t1_ms", "expected"),
    [
        (30, 60, 5_000, 10_000, 0.338),
        (60, 90, 10_000, 15_000, 0.132),
        (100, 130, 20_000, 30_000, 0.080),
    ],
)
def test_touch_probability_matches_the_reference_points(
    lo_usd: int, hi_usd: int, t0_ms: int, t1_ms: int, expected: float
) -> None:
    p = touch_probability(S, S + lo_usd * USD, S + hi_usd * USD, SIGMA, t0_ms, t1_ms)
    assert abs(p - expected) < 0.005


def test_published_multiplier_example() -> None:
    assert multiplier_bps(0.338, 500, 1_000_000) == 28_106  # API.md: P = 0.338 → 2.81×
    p = touch_probability(S, S + 30 * USD, S + 60 * USD, SIGMA, 5_000, 10_000)
    assert multiplier_bps(p, 500, 1_000_000) == 28_096  # the unrounded P = 0.33813


def test_window_starting_now_is_the_reflection_closed_form() -> None:
    t1 = 7_000
    s = SIGMA * math.sqrt(t1 / YEAR_MS)
    above = touch_probability(S, S + 2_000, S + 3_000, SIGMA, 0, t1)
    assert above == pytest.approx(2 * normal_cdf(-math.log((S + 2_000) / S) / s), abs=1e-15)
    below = touch_probability(S, S - 5_000, S - 4_000, SIGMA, 0, t1)
    assert below == pytest.approx(2 * normal_cdf(math.log((S - 4_000) / S) / s), abs=1e-15)


def test_spot_inside_the_band_with_the_window_open_is_certain() -> None:
    assert touch_probability(S, S - 10, S + 10, SIGMA, 0, 5_000) == 1.0
    assert touch_probability(S, S, S + 1_000, SIGMA, -2_000, 3_000) == 1.0  # on the line counts


def test_empty_or_past_window_has_probability_zero() -> None:
    assert touch_probability(S, S - 10, S + 10, SIGMA, 5_000, 5_000) == 0.0
    assert touch_probability(S, S - 10, S + 10, SIGMA, -9_000, -4_000) == 0.0


def test_zero_volatility_is_deterministic() -> None:
    assert touch_probability(S, S - 10, S + 10, 0.0, 1_000, 5_000) == 1.0
    assert touch_probability(S, S + 10, S + 20, 0.0, 1_000, 5_000) == 0.0


def test_band_reaching_down_to_price_zero_has_no_lower_edge() -> None:
    # row 0 of a market: price_lo = 0 ⇒ only the upper edge can be crossed
    p = touch_probability(S, 0, S // 2, 3.0, 5_000, 10_000)
    assert 0.0 <= p < 1e-12


@pytest.mark.parametrize(
    ("spot", "lo", "hi", "sigma", "message"),
    [(0, 1, 2, 0.6, "spot"), (10, 5, 4, 0.6, "reversed"), (10, 5, 6, -0.1, "sigma")],
)
def test_nonsense_arguments_are_refused(
    spot: int, lo: int, hi: int, sigma: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        touch_probability(spot, lo, hi, sigma, 0, 1_000)


# ── bivariate normal CDF ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("rule", [_GL6, _GL12, _GL20])
def test_gauss_legendre_tables_integrate_polynomials_exactly(
    rule: tuple[tuple[float, float], ...],
) -> None:
    degree = 4 * len(rule) - 1  # an n-point rule is exact to degree 2n − 1; here n = 2·len(rule)
    for power in range(degree + 1):
        got = sum(w * (x**power + (-x) ** power) for x, w in rule)
        exact = 0.0 if power % 2 else 2.0 / (power + 1)
        assert got == pytest.approx(exact, abs=1e-14), power


@pytest.mark.parametrize("r", [-0.999, -0.95, -0.9, -0.5, -0.1, 0.0, 0.2, 0.6, 0.93, 0.9999])
def test_bivariate_cdf_at_the_origin_is_sheppards_formula(r: float) -> None:
    assert bivariate_normal_cdf(0.0, 0.0, r) == pytest.approx(
        0.25 + math.asin(r) / (2 * math.pi), abs=1e-14
    )


def _phi2_by_quadrature(h: float, k: float, r: float, n: int = 20_000) -> float:
    """∫_{−12}^{h} φ(x) Φ((k − r x)/√(1 − r²)) dx by composite Simpson: slow and independent."""
    lo = -12.0
    if h <= lo:
        return 0.0
    dx = (h - lo) / n
    q = math.sqrt(1.0 - r * r)
    total = 0.0
    for i in range(n + 1):
        x = lo + i * dx
        f = math.exp(-x * x / 2) / math.sqrt(2 * math.pi) * normal_cdf((k - r * x) / q)
        total += f * (1 if i in (0, n) else 4 if i % 2 else 2)
    return total * dx / 3


@pytest.mark.parametrize(
    ("h", "k", "r"),
    [
        (0.3, -1.2, -0.2),
        (-1.5, 2.0, 0.55),
        (1.1, 0.4, -0.7),
        (-2.5, -0.3, 0.8),
        (2.0, -1.9, -0.95),  # the high-|r| branch, as the grid's long horizons produce
        (-0.7, 1.4, -0.99),
        (1.3, 1.25, 0.97),
        (-3.0, 3.5, -0.5),
    ],
)
def test_bivariate_cdf_agrees_with_direct_quadrature(h: float, k: float, r: float) -> None:
    assert bivariate_normal_cdf(h, k, r) == pytest.approx(_phi2_by_quadrature(h, k, r), abs=1e-10)


def test_bivariate_cdf_limits() -> None:
    assert bivariate_normal_cdf(0.4, -0.3, 0.0) == pytest.approx(
        normal_cdf(0.4) * normal_cdf(-0.3), abs=1e-15
    )
    assert bivariate_normal_cdf(0.4, 1.0, 1.0) == pytest.approx(normal_cdf(0.4), abs=1e-15)
    assert bivariate_normal_cdf(0.4, 1.0, -1.0) == pytest.approx(
        normal_cdf(0.4) - normal_cdf(-1.0), abs=1e-15
    )
    assert bivariate_normal_cdf(math.inf, 0.5, 0.3) == normal_cdf(0.5)
    assert bivariate_normal_cdf(-math.inf, 0.5, 0.3) == 0.0
    with pytest.raises(ValueError, match="correlation"):
        bivariate_normal_cdf(0.0, 0.0, 1.5)


# ── seeded Monte Carlo ────────────────────────────────────────────────────────────────────────


def _monte_carlo_touch(
    spot: int, lo: int, hi: int, sigma: float, t0_ms: int, t1_ms: int, *, paths: int, seed: int
) -> tuple[float, float]:
    """Continuous-monitoring touch probability by simulation: (estimate, standard error).

    Samples X at t0 and then at 8 steps to t1. Between two nodes on the same side of the band,
    the chance the Brownian bridge reached the near edge is exp(−2·d₁·d₂/(σ²Δt)); multiplying
    the survival chances (a conditional expectation) removes the discrete-monitoring bias that
    checking only the nodes would have, so no continuity correction is needed at any step size.
    """
    rng = random.Random(seed)
    gauss = rng.gauss
    steps = 8
    x0, a, b = math.log(spot), math.log(lo), math.log(hi)
    s0 = sigma * math.sqrt(t0_ms / YEAR_MS)
    dt = (t1_ms - t0_ms) / steps / YEAR_MS
    sd = sigma * math.sqrt(dt)
    k = 2.0 / (sigma * sigma * dt)
    total = total_sq = 0.0
    for _ in range(paths):
        x = x0 + s0 * gauss(0.0, 1.0)
        survive = 0.0 if a <= x <= b else 1.0
        for _ in range(steps if survive else 0):
            y = x + sd * gauss(0.0, 1.0)
            if x > b:
                if y <= b:
                    survive = 0.0
                    break
                survive *= 1.0 - math.exp(-(x - b) * (y - b) * k)
            else:
                if y >= a:
                    survive = 0.0
                    break
                survive *= 1.0 - math.exp(-(a - x) * (a - y) * k)
            x = y
        est = 1.0 - survive
        total += est
        total_sq += est * est
    mean = total / paths
    return mean, math.sqrt(max(0.0, total_sq / paths - mean * mean) / paths)


@pytest.mark.parametrize(
    ("lo", "hi", "t0_ms", "t1_ms", "seed"),
    [
        (S + 3_000, S + 6_000, 5_000, 10_000, 1),
        (S + 6_000, S + 9_000, 10_000, 15_000, 2),
        (S + 10_000, S + 13_000, 20_000, 30_000, 3),
        (S - 4_000, S - 3_000, 55_000, 60_000, 4),  # far column: correlation 0.96
        (S - 500, S + 500, 5_000, 10_000, 5),  # spot inside the band, window ahead
    ],
)
def test_touch_probability_agrees_with_seeded_monte_carlo(
    lo: int, hi: int, t0_ms: int, t1_ms: int, seed: int
) -> None:
    p = touch_probability(S, lo, hi, SIGMA, t0_ms, t1_ms)
    estimate, stderr = _monte_carlo_touch(S, lo, hi, SIGMA, t0_ms, t1_ms, paths=40_000, seed=seed)
    assert abs(estimate - p) < 4.5 * stderr, (p, estimate, stderr)


def test_discrete_monitoring_correction_tracks_ticks_every_250_ms() -> None:
    """The Broadie–Glasserman shift is an approximation: pinned to 0.015 of a tick simulation."""
    lo, hi, t0, t1, tick = S + 3_000, S + 6_000, 5_000, 10_000, 250
    corrected = touch_probability(S, lo, hi, SIGMA, t0, t1, monitoring_ms=tick)
    continuous = touch_probability(S, lo, hi, SIGMA, t0, t1)
    rng = random.Random(7)
    a, b = math.log(lo / S), math.log(hi / S)
    sd = SIGMA * math.sqrt(tick / YEAR_MS)
    hits = 0
    paths = 20_000
    for _ in range(paths):
        x = SIGMA * math.sqrt(t0 / YEAR_MS) * rng.gauss(0.0, 1.0)  # the tick at t_start
        for i in range((t1 - t0) // tick):
            if i:
                x += sd * rng.gauss(0.0, 1.0)
            if a <= x <= b:
                hits += 1
                break
    simulated = hits / paths
    assert corrected < continuous
    assert abs(corrected - simulated) < 0.015, (corrected, simulated, continuous)


# ── multiplier ────────────────────────────────────────────────────────────────────────────────


def test_multiplier_is_the_exact_floor_of_the_float_probability() -> None:
    # 9500 / 0.38 is 25000.0 in float arithmetic, but the float 0.38 is a hair above 0.38, so
    # the exact quotient is just below 25000: the house pays 24999, never a basis point more.
    assert 9500 / 0.38 == 25000.0
    assert multiplier_bps(0.38, 500, 1_000_000) == 24_999
    assert multiplier_bps(0.5, 500, 1_000_000) == 19_000
    for p in (0.338, 0.1, 0.7, 0.95, 0.0123):
        m = multiplier_bps(p, 500, 1_000_000)
        assert Fraction(m) * Fraction(p) <= 9_500 < Fraction(m + 1) * Fraction(p)


def test_multiplier_is_capped_and_unreachable_cells_pay_the_cap() -> None:
    assert multiplier_bps(1e-9, 500, 1_000_000) == 1_000_000
    assert multiplier_bps(0.0, 500, 1_000_000) == 1_000_000
    assert multiplier_bps(1.0, 500, 1_000_000) == 9_500


def test_multiplier_refuses_nan_and_negative_probabilities() -> None:
    with pytest.raises(ValueError):
        multiplier_bps(math.nan, 500, 1_000_000)
    with pytest.raises(ValueError):
        multiplier_bps(-0.1, 500, 1_000_000)


# ── EWMA volatility ───────────────────────────────────────────────────────────────────────────


def test_volatility_starts_at_the_configured_initial_value() -> None:
    vol = EwmaVolatility(PricingConfig(vol_initial=0.6))
    assert vol.sigma == pytest.approx(0.6)
    assert vol.update(1_000, S) == pytest.approx(0.6)  # one tick has no return yet


def test_volatility_moves_halfway_in_one_half_life() -> None:
    cfg = PricingConfig(vol_initial=0.6, vol_floor=0.01, vol_cap=10.0, vol_halflife_ms=10_000)
    vol = EwmaVolatility(cfg)
    target = 1.8
    dt = 100
    r = target * math.sqrt(dt / YEAR_MS)  # every return has variance rate exactly target²
    ts, x = 0, math.log(S)
    vol.update(ts, S)
    for i in range(100):  # 100 × 100 ms = one half-life
        ts += dt
        x += r if i % 2 == 0 else -r
        vol.update(ts, math.exp(x))
    assert vol.sigma == pytest.approx(math.sqrt((0.6**2 + target**2) / 2), rel=1e-6)


def test_volatility_estimates_a_simulated_random_walk() -> None:
    cfg = PricingConfig(vol_initial=0.3, vol_floor=0.01, vol_cap=10.0, vol_halflife_ms=60_000)
    vol = EwmaVolatility(cfg)
    rng = random.Random(11)
    true_sigma, dt = 1.2, 250
    x, ts = math.log(S), 0
    for _ in range(4_000):  # 1000 s ≈ 17 half-lives
        vol.update(ts, round(math.exp(x)))
        ts += dt
        x += true_sigma * math.sqrt(dt / YEAR_MS) * rng.gauss(0.0, 1.0)
    assert vol.sigma == pytest.approx(true_sigma, rel=0.15)


def test_volatility_is_clamped_to_floor_and_cap() -> None:
    cfg = PricingConfig(vol_initial=0.6, vol_floor=0.2, vol_cap=3.0, vol_halflife_ms=1_000)
    quiet = EwmaVolatility(cfg)
    for i in range(100):
        quiet.update(i * 250, S)
    assert quiet.sigma == 0.2
    wild = EwmaVolatility(cfg)
    for i in range(100):
        wild.update(i * 250, S if i % 2 else S * 2)
    assert wild.sigma == 3.0


def test_volatility_skips_ticks_that_do_not_move_time_forward() -> None:
    cfg = PricingConfig(vol_initial=0.6, vol_floor=0.01, vol_cap=50.0, vol_halflife_ms=1_000)
    vol = EwmaVolatility(cfg)
    vol.update(1_000, S)
    before = vol.sigma
    assert vol.update(1_000, S * 2) == before  # same ms: no division by zero
    assert vol.update(900, S * 3) == before  # out of order: ignored
    # the reference is still (1000, S): the next return spans the whole move
    after = vol.update(1_250, S)
    assert after < before  # S → S over 250 ms is no move at all


# ── the tick interval ────────────────────────────────────────────────────────────────────────


def test_tick_interval_of_a_regular_feed_is_its_cadence() -> None:
    estimate = TickInterval(initial_ms=1_000, cap_ms=2_000)
    for k in range(400):
        estimate.update(1_700_000_000_000 + 250 * k)
    assert estimate.interval_ms == 250


def test_tick_interval_of_an_irregular_stream_is_its_mean_gap_and_ignores_repeats() -> None:
    rng = random.Random(5)
    estimate = TickInterval(initial_ms=250, cap_ms=2_000)
    ts = 0
    for _ in range(5_000):
        ts += rng.choice((20, 60, 100))  # mean 60 ms
        estimate.update(ts)
        estimate.update(ts)  # a second trade in the same millisecond is no new observation
        estimate.update(ts - 5)  # nor is an older one
    assert 50 <= estimate.interval_ms <= 70


def test_tick_interval_counts_an_outage_as_at_most_the_cap() -> None:
    estimate = TickInterval(initial_ms=250, cap_ms=2_000)
    for k in range(100):
        estimate.update(250 * k)
    estimate.update(250 * 99 + 3_600_000)  # an hour of silence
    assert estimate.interval_ms == round(250 + (2_000 - 250) / TickInterval.GAP_WEIGHT)
