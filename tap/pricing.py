"""Pricing: how likely a price path is to touch a cell, what multiplier that earns, and σ.

Decides three things, exactly as API.md "Pricing" publishes them so anyone can check a quote:
the probability that a driftless log-price Brownian motion touches a price band during a future
time window (continuous monitoring, closed form through bivariate normal CDFs), the house
multiplier in integer basis points, and the annualized volatility estimated from ticks by an
EWMA. It leaves to its caller which cells to price, when to recompute and what to cache
(`tap.quotes`); it reads no clock — every time is an argument in ms.

Pure Python and `math`: no numpy, so the published formula has no hidden dependency.
"""

from __future__ import annotations

import math

from tap.config import PricingConfig

YEAR_MS = 365 * 24 * 3600 * 1000  # API.md: a year is 365·24·3600 s
BPS = 10_000

# Broadie–Glasserman–Kou: monitoring a Brownian barrier every Δt behaves like monitoring
# continuously a barrier moved away from the spot by β·σ·√Δt, β = −ζ(½)/√(2π).
DISCRETE_MONITORING_BETA = 0.5825971579390106

_SQRT2 = math.sqrt(2.0)
_SQRT_TWO_PI = math.sqrt(2.0 * math.pi)
_TWO_PI = 2.0 * math.pi
# Below this a term of the touch probability is dropped: it cannot move a multiplier.
_NEGLIGIBLE = 1e-17

# Gauss–Legendre half-rules (the positive abscissae and their weights) with 6, 12 and 20 points,
# as in Genz's BVNU; `test_pricing` checks they integrate polynomials of degree 2n−1 exactly.
_GL6 = (
    (0.9324695142031521, 0.1713244923791704),
    (0.6612093864662645, 0.3607615730481386),
    (0.2386191860831969, 0.4679139345726910),
)
_GL12 = (
    (0.9815606342467192, 0.0471753363865118),
    (0.9041172563704749, 0.1069393259953184),
    (0.7699026741943047, 0.1600783285433462),
    (0.5873179542866175, 0.2031674267230659),
    (0.3678314989981802, 0.2334925365383548),
    (0.1252334085114689, 0.2491470458134028),
)
_GL20 = (
    (0.9931285991850949, 0.0176140071391521),
    (0.9639719272779138, 0.0406014298003869),
    (0.9122344282513259, 0.0626720483341091),
    (0.8391169718222188, 0.0832767415767048),
    (0.7463319064601508, 0.1019301198172404),
    (0.6360536807265150, 0.1181945319615184),
    (0.5108670019508271, 0.1316886384491766),
    (0.3737060887154195, 0.1420961093183820),
    (0.2277858511416451, 0.1491729864726037),
    (0.0765265211334973, 0.1527533871307258),
)


def normal_cdf(x: float) -> float:
    """Φ(x). Through `erfc`, so the far tails keep their relative precision."""
    return 0.5 * math.erfc(-x / _SQRT2)


def _bvn_upper(h: float, k: float, r: float) -> float:
    """P(X > h, Y > k) for standard normals with correlation r, h and k finite.

    Genz (2004), "Numerical computation of rectangular bivariate and trivariate normal and t
    probabilities" (his BVNU): Drezner–Wesolowsky's integral over the angle, by Gauss–Legendre,
    for |r| < 0.925; for larger |r| the integrand is nearly singular, so the singular part is
    taken out in closed form and only a smooth remainder is integrated. About 1e-15 absolute.
    """
    ar = abs(r)
    rule = _GL6 if ar < 0.3 else _GL12 if ar < 0.75 else _GL20
    hk = h * k
    if ar < 0.925:
        hs = (h * h + k * k) / 2.0
        asr = math.asin(r) / 2.0
        total = 0.0
        for x, w in rule:
            for u in (1.0 - x, 1.0 + x):
                sn = math.sin(asr * u)
                total += w * math.exp((sn * hk - hs) / (1.0 - sn * sn))
        return total * asr / _TWO_PI + normal_cdf(-h) * normal_cdf(-k)
    if r < 0.0:
        k = -k
        hk = -hk
    bvn = 0.0
    if ar < 1.0:
        as_ = (1.0 - r) * (1.0 + r)
        a = math.sqrt(as_)
        bs = (h - k) ** 2
        c = (4.0 - hk) / 8.0
        d = (12.0 - hk) / 16.0
        bvn = (
            a
            * math.exp(-(bs / as_ + hk) / 2.0)
            * (1.0 - c * (bs - as_) * (1.0 - d * bs / 5.0) / 3.0 + c * d * as_ * as_ / 5.0)
        )
        if hk > -160.0:
            b = math.sqrt(bs)
            bvn -= (
                math.exp(-hk / 2.0)
                * _SQRT_TWO_PI
                * normal_cdf(-b / a)
                * b
                * (1.0 - c * bs * (1.0 - d * bs / 5.0) / 3.0)
            )
        a /= 2.0
        for x, w in rule:
            for u in (1.0 - x, 1.0 + x):
                xs = (a * u) ** 2
                rs = math.sqrt(1.0 - xs)
                asr = -(bs / xs + hk) / 2.0
                if asr > -100.0:
                    bvn += (
                        a
                        * w
                        * math.exp(asr)
                        * (
                            math.exp(-hk * xs / (2.0 * (1.0 + rs) ** 2)) / rs
                            - (1.0 + c * xs * (1.0 + d * xs))
                        )
                    )
        bvn = -bvn / _TWO_PI
    if r > 0.0:
        return bvn + normal_cdf(-max(h, k))
    bvn = -bvn
    if k > h:
        bvn += normal_cdf(k) - normal_cdf(h) if h < 0.0 else normal_cdf(-h) - normal_cdf(-k)
    return bvn


def bivariate_normal_cdf(h: float, k: float, r: float) -> float:
    """Φ₂(h, k; r) = P(X ≤ h, Y ≤ k) for standard normals X, Y with correlation r ∈ [−1, 1]."""
    if not -1.0 <= r <= 1.0:
        raise ValueError(f"correlation {r!r} is outside [-1, 1]")
    if h == -math.inf or k == -math.inf:
        return 0.0
    if h == math.inf:
        return normal_cdf(k)
    if k == math.inf:
        return normal_cdf(h)
    return min(1.0, max(0.0, _bvn_upper(-h, -k, r)))


def touch_probability(
    spot: float,
    price_lo: float,
    price_hi: float,
    sigma: float,
    t0_ms: int,
    t1_ms: int,
    *,
    monitoring_ms: int = 0,
) -> float:
    """P(the price touches the closed band [price_lo, price_hi] at some time in [t0, t1]).

    `t0_ms`, `t1_ms` are offsets from the moment `spot` was observed (API.md: t0 = max(0,
    t_start − as_of), t1 = t_end − as_of); `sigma` is annualized; prices may be in any unit
    (the model is scale-free: only ratios enter). X = log price moves as σ·W with no drift.

    The path touches the band iff, at t0, it is inside; or it is above and its minimum over
    [t0, t1] reaches the upper edge; or below and its maximum reaches the lower edge. These are
    disjoint, and by the reflection principle, for y above the edge b,
    P(min ≤ b | X_t0 = y) = 2·P(X_t1 ≤ b | X_t0 = y), so

        P = P(a ≤ X_t0 ≤ b) + 2·P(X_t0 > b, X_t1 < b) + 2·P(X_t0 < a, X_t1 > a),

    two bivariate normal CDFs with correlation −√(t0/t1). With t0 = 0 this is 1 inside the band
    and 2·Φ(−d/(σ√t1)) outside it, d the log distance to the near edge.

    `monitoring_ms` > 0 prices discrete monitoring (a tick every `monitoring_ms`) with the
    Broadie–Glasserman shift: the edges a path must *cross* move away from it by β·σ·√Δt. That
    is an approximation, and the grid says it uses it in `monitoring_interval_ms`; 0 (the
    default and API.md's published rule) is the exact continuous-monitoring probability.

    An empty or past window (t1 ≤ max(t0, 0)) has probability 0.
    """
    if not spot > 0:
        raise ValueError(f"spot must be positive, got {spot!r}")
    if not price_lo <= price_hi:
        raise ValueError(f"band [{price_lo!r}, {price_hi!r}] has its edges reversed")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if monitoring_ms < 0:
        raise ValueError(f"monitoring_ms must be >= 0, got {monitoring_ms!r}")
    t0 = max(0, t0_ms)
    if t1_ms <= t0 or price_hi <= 0:
        return 0.0
    # Log distances from the spot to the edges (log of a ratio keeps small distances precise).
    b = math.log(price_hi / spot)
    a = math.log(price_lo / spot) if price_lo > 0 else -math.inf
    inside = price_lo <= spot <= price_hi
    if sigma == 0.0:
        return 1.0 if inside else 0.0
    shift = DISCRETE_MONITORING_BETA * sigma * math.sqrt(monitoring_ms / YEAR_MS)
    b_cross = b - shift
    a_cross = a + shift
    s1 = sigma * math.sqrt(t1_ms / YEAR_MS)
    if t0 == 0:
        if inside:
            return 1.0
        if spot > price_hi:
            return min(1.0, 2.0 * normal_cdf(b_cross / s1))
        return min(1.0, 2.0 * normal_cdf(-a_cross / s1))
    s0 = sigma * math.sqrt(t0 / YEAR_MS)
    rho = math.sqrt(t0 / t1_ms)
    hb = b / s0  # X_t0 > b  ⇔  Z0 > hb
    ha = a / s0  # X_t0 < a  ⇔  Z0 < ha
    above = normal_cdf(-hb)
    below = normal_cdf(ha)
    # P(a ≤ X_t0 ≤ b), subtracting tails rather than near-1 values when the band is far away.
    if ha > 0.0:
        p = normal_cdf(-ha) - above
    elif hb < 0.0:
        p = normal_cdf(hb) - below
    else:
        p = 1.0 - above - below
    if above > _NEGLIGIBLE:
        # 2·P(X_t0 > b, X_t1 < b) = 2·P(Z0 > hb, Z1 < b/s1) = 2·Φ₂(−hb, b/s1; −ρ)
        p += 2.0 * _clamped_bvn(-hb, b_cross / s1, -rho)
    if below > _NEGLIGIBLE:
        # 2·P(X_t0 < a, X_t1 > a) = 2·P(Z0 < ha, Z1 > a/s1) = 2·Φ₂(ha, −a/s1; −ρ)
        p += 2.0 * _clamped_bvn(ha, -a_cross / s1, -rho)
    return min(1.0, max(0.0, p))


def _clamped_bvn(h: float, k: float, r: float) -> float:
    """Φ₂ for finite h, k and |r| < 1, without `bivariate_normal_cdf`'s argument checks."""
    return min(1.0, max(0.0, _bvn_upper(-h, -k, r)))


def multiplier_bps(p: float, house_edge_bps: int, max_multiplier_bps: int) -> int:
    """The multiplier a cell with touch probability `p` pays, in integer basis points.

    `min(max_multiplier_bps, floor((10000 − house_edge_bps) / p))`, so a player's expected
    return is at most 1 − edge. The floor is taken exactly on the float's rational value, never
    on a rounded float quotient: a quotient that lands a hair above an integer in floating point
    must not pay one basis point more than the formula says. p = 0 (an unreachable cell) pays the
    cap; a probability is never allowed to be NaN, since NaN would otherwise compare its way to
    the cap.
    """
    if math.isnan(p) or p < 0:
        raise ValueError(f"probability must be in [0, 1], got {p!r}")
    if p == 0:
        return max_multiplier_bps
    num, den = min(p, 1.0).as_integer_ratio()
    return min(max_multiplier_bps, ((BPS - house_edge_bps) * den) // num)


class EwmaVolatility:
    """Annualized σ from an exponentially weighted average of squared log-returns per unit time.

    Each tick contributes its return's variance rate r²/Δt with weight 1 − 2^(−Δt/half-life), so
    irregular tick spacing is weighted by the time it covers: a burst of ticks does not outvote a
    quiet minute. A tick at or before the previous one is skipped and the previous stays the
    reference, so returns telescope and nothing is divided by zero. The estimate starts at
    `vol_initial` and is clamped to [`vol_floor`, `vol_cap`]: the floor keeps a quiet feed from
    pricing cells as unreachable (a huge multiplier), the cap keeps a glitch from freezing the grid.
    """

    __slots__ = ("_cap", "_floor", "_halflife_ms", "_last_price", "_last_ts", "_rate")

    def __init__(self, pricing: PricingConfig) -> None:
        self._floor = pricing.vol_floor
        self._cap = pricing.vol_cap
        self._halflife_ms = pricing.vol_halflife_ms
        self._rate = pricing.vol_initial**2 / YEAR_MS  # variance of log price per ms
        self._last_ts: int | None = None
        self._last_price = 0.0

    @property
    def sigma(self) -> float:
        """The current annualized volatility, clamped to [floor, cap]."""
        return min(self._cap, max(self._floor, math.sqrt(self._rate * YEAR_MS)))

    def update(self, ts_ms: int, price: float) -> float:
        """Feed one tick (price in any positive unit); returns the updated `sigma`.

        Non-positive prices are ignored: a log-return needs two positive prices.
        """
        if price <= 0:
            return self.sigma
        if self._last_ts is None:
            self._last_ts, self._last_price = ts_ms, price
            return self.sigma
        dt = ts_ms - self._last_ts
        if dt <= 0:
            return self.sigma
        r = math.log(price / self._last_price)
        keep = 0.5 ** (dt / self._halflife_ms) if self._halflife_ms > 0 else 0.0
        self._rate = keep * self._rate + (1.0 - keep) * (r * r / dt)
        self._last_ts, self._last_price = ts_ms, price
        return self.sigma
