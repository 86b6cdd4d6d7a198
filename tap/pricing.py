"""Pricing: how likely a tick is to land in a cell, what multiplier that earns, σ and tick rate.

Decides, exactly as API.md "Pricing" and docs/pricing.md publish them so anyone can check a quote:

- `tick_touch_probabilities`: the probability of the win rule that is actually used — some
  *tick* of the feed's schedule inside the window lands in the closed band — for a driftless
  log-price Brownian motion, by an exact numerical recursion over the tick times (the quotes);
- `touch_probability`: the continuous-monitoring touch probability in closed form (bivariate
  normal CDFs) — the small-interval limit of the above, kept as its reference and check;
- the house multiplier in integer basis points;
- the annualized volatility (EWMA of log-returns) and the feed's effective tick interval (EWMA
  of inter-arrival gaps).

It leaves to its caller which cells to price, when to recompute and what to cache (`tap.quotes`);
it reads no clock — every time is an argument in ms. The recursion uses numpy's FFT: a full grid
is 16 rows × 20 convolutions of ~2000 points, which pure Python cannot do within a refresh.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import numpy as np

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


# ── the discrete-tick win rule ────────────────────────────────────────────────────────────────

# Grid step of the recursion, in standard deviations of one tick's log-return. The error of the
# trapezoid rule with the band's jump on a node is O(h²): at 0.05 a probability is within ~3e-5
# of its limit (measured in props/test_pricing_props.py); halving it doubles the cost.
TICK_GRID_STEP = 0.05
# Absorbed mass further than this many √n tick deviations from the band is below 3e-12: the grid
# ends there.
_GRID_REACH_SD = 7.0
# The Gaussian kernel is cut at ±8.5 sd (its tail mass is 2e-17).
_KERNEL_REACH_SD = 8.5
# A window with more ticks than this is priced on a coarser schedule (every j-th tick, the band
# widened by the Broadie–Glasserman–Kou shift of the skipped ticks): a dense exchange stream would
# otherwise cost one convolution per tick. With 250 ms ticks and 5 s columns (20) it never applies.
MAX_WINDOW_STEPS = 64
# Grid points across the band at most (a band hundreds of tick deviations wide needs no 0.05).
_MAX_BAND_POINTS = 2000


def tick_touch_probabilities(
    spot: int,
    bands: Sequence[tuple[int, int]],
    sigma: float,
    interval_ms: int,
    windows: Sequence[tuple[int, int]],
    cache: AbsorptionCache | None = None,
    *,
    only: Collection[int] | None = None,
) -> list[list[float]]:
    """P[i][j]: the chance that a tick in window j lands in band i (the win rule of API.md).

    The model (docs/pricing.md): log price X is a driftless Brownian motion with annualized
    volatility `sigma`, starting at log(`spot`) at `as_of`; ticks are observed at
    `as_of + k·interval_ms` for k = 1, 2, …; a tick's price is X's price rounded to the nearest
    increment, so it lies in the closed integer band [lo, hi] iff exp(X) ∈ [lo − ½, hi + ½].
    Window j = (t0, t1) is in ms relative to `as_of` (t0 = t_start − as_of, t1 = t_end − as_of),
    half-open like a cell's window; with t0 ≤ 0 the `as_of` tick itself is inside it.

    Method: in units of one tick's standard deviation, with the band at [0, w], let R_m(v) be the
    chance that at least one of the next m window ticks lands in the band, given the first of them
    lands at v. Then R_1 = 1_band and R_{m+1}(v) = 1_band(v) + 1_out(v)·E[R_m(v + Z)] — one
    convolution with the unit Gaussian per tick, done by FFT on a uniform grid whose nodes fall on
    both band edges (the trapezoid rule then takes the jump's mean at the edge: O(h²)). R depends
    on the band and the tick count only, so one recursion per row serves every column; each cell
    is then one Gaussian integral of R_n against the position of the window's first tick,
    N(log spot, σ²·k0·interval). All rows run as one batched FFT; `cache` keeps each row's R
    for the next call with the same σ and interval (the result does not depend on it).

    `only`: integrate just these windows (indices into `windows`); the other windows' entries
    are then not computed and mean nothing. Every window still shapes the recursion (its tick
    counts, the grid's reach and the cache key), so a priced entry is exactly the one the call
    without `only` gives and a row's cached recursion is found: this is how admission prices one
    cell of a grid from a new tick (`tap.quotes.GridBook.quote_tick`).
    """
    if not spot > 0:
        raise ValueError(f"spot must be positive, got {spot!r}")
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if interval_ms <= 0:
        raise ValueError(f"interval_ms must be positive, got {interval_ms!r}")
    for lo, hi in bands:
        if not 0 <= lo <= hi:
            raise ValueError(f"band [{lo!r}, {hi!r}] must satisfy 0 <= lo <= hi")
    out = [[0.0] * len(windows) for _ in bands]
    # Per window: index of its first tick and its tick count (0: no tick falls inside).
    firsts: list[int] = []
    counts: list[int] = []
    for j, (t0, t1) in enumerate(windows):
        k0 = max(1, -(-t0 // interval_ms))
        k1 = -(-t1 // interval_ms) - 1
        firsts.append(k0)
        counts.append(max(0, k1 - k0 + 1))
        if t0 <= 0 < t1:  # the as_of tick is in the window: a band holding the spot is won
            for i, (lo, hi) in enumerate(bands):
                if lo <= spot <= hi:
                    out[i][j] = 1.0
    if sigma == 0.0:
        for i, (lo, hi) in enumerate(bands):
            for j in range(len(windows)):
                if counts[j] and lo <= spot <= hi:
                    out[i][j] = 1.0
        return out
    if max(counts, default=0) == 0 or not bands:
        return out
    tick_sd = sigma * math.sqrt(interval_ms / YEAR_MS)  # log-return sd of one tick
    log_spot = math.log(spot)
    # Windows of at most MAX_WINDOW_STEPS ticks are priced exactly, together. A window of n more
    # ticks is priced on MAX_WINDOW_STEPS steps from its first to its last tick, each the
    # variance of q = (n−1)/(MAX_WINDOW_STEPS−1) ticks, with the band widened per side by
    # β·(√q − 1)·tick_sd (Broadie–Glasserman–Kou: monitoring every q ticks behaves like
    # monitoring every tick with the band that much wider). One group per distinct n.
    groups: dict[int, list[int]] = {}
    for j, n in enumerate(counts):
        if n:
            groups.setdefault(0 if n <= MAX_WINDOW_STEPS else n, []).append(j)
    for n_coarse, members in groups.items():
        q = 1.0 if n_coarse == 0 else (n_coarse - 1) / (MAX_WINDOW_STEPS - 1)
        unit = tick_sd * math.sqrt(q)  # log-return sd of one step
        widen = DISCRETE_MONITORING_BETA * (unit - tick_sd)
        steps = {j: counts[j] if n_coarse == 0 else MAX_WINDOW_STEPS for j in members}
        start_sd = {j: math.sqrt(firsts[j] / q) for j in members}
        needed = tuple(sorted(set(steps.values())))
        reach = _GRID_REACH_SD * math.sqrt(needed[-1]) + 2.0
        # A band reaching down to price 0 is cut where no path can go: below the spot by more
        # than every window's reach.
        floor = -(reach + _GRID_REACH_SD * max(start_sd.values()) + 10.0)
        if only is not None:  # the group's shape is fixed above: now drop the unasked windows
            members = [j for j in members if j in only]
            if not members:
                continue
        lows: list[float] = []
        widths: list[float] = []
        keys: list[tuple[float, tuple[int, ...]] | None] = []
        for lo, hi in bands:
            top = math.log(hi + 0.5) + widen
            bottom = math.log(lo - 0.5) - widen if lo > 0.5 else -math.inf
            low = (bottom - log_spot) / unit
            if low >= floor:
                width = (top - bottom) / unit  # independent of the spot: a requote reuses it
                keys.append((width, needed))
            else:
                low = min(floor, (top - log_spot) / unit - 1.0)
                width = (top - log_spot) / unit - low
                keys.append(None)
            lows.append(low)
            widths.append(width)
        found = [None if key is None or cache is None else cache.get(key) for key in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        if missing:
            fresh = _absorb(np.array([widths[i] for i in missing]), needed, reach)
            for i, computed in zip(missing, fresh, strict=True):
                found[i] = computed
                key = keys[i]
                if cache is not None and key is not None:
                    cache.put(key, computed)
        sds = np.array([start_sd[j] for j in members])
        # The Gaussian weights of every member on a row's nodes, as one exponential of an outer
        # product (−½·u² times each member's 1/sd²) and the normalisation applied after the
        # dot: two array passes per row instead of six (this runs on every requote).
        inv_var = 1.0 / (sds * sds)
        norm = 1.0 / (_SQRT_TWO_PI * sds)
        by_steps: dict[int, list[int]] = {}
        for k, j in enumerate(members):
            by_steps.setdefault(steps[j], []).append(k)
        groups_k = [(n, ks if len(ks) < len(members) else None) for n, ks in by_steps.items()]
        for i, known in enumerate(found):
            row = known if known is not None else _absorb(np.array([widths[i]]), needed, reach)[0]
            u = (np.arange(row.absorbed[needed[0]].size) - row.origin) * row.h + lows[i]
            u *= u
            u *= -0.5  # the spot sits at −low on the axis: u is a node's distance from it
            gauss = np.exp(np.multiply.outer(inv_var, u))
            out_i = out[i]
            for n, ks in groups_k:
                if ks is None:
                    ps = (gauss @ row.absorbed[n]) * (norm * row.h)
                    pairs = zip(members, ps.tolist(), strict=True)
                else:
                    ps = (gauss[ks] @ row.absorbed[n]) * (norm[ks] * row.h)
                    pairs = zip([members[k] for k in ks], ps.tolist(), strict=True)
                for j, p in pairs:
                    if out_i[j] < 1.0:
                        out_i[j] = min(1.0, max(0.0, p))
    return out


class _RowAbsorption(NamedTuple):
    """One band's recursion: its grid (node i at (i − origin)·h, the band at [0, width]) and
    R_n on it for each needed tick count n (the trapezoid's node values: mean at the edges)."""

    h: float
    origin: int
    absorbed: dict[int, np.ndarray[Any, Any]]


class AbsorptionCache:
    """Recursion results per band, kept between grids by their owner (`tap.quotes.GridBook`).

    R depends on a band's width in tick deviations and the tick counts only — not on the spot or
    on when the window starts — so a requote from a new price with the same σ and Δ reuses every
    row it has seen and pays only the final integrals. Keys are exact floats: a different σ, Δ or
    band is a different key, never a near miss. Bounded: full, it starts over.
    """

    __slots__ = ("_capacity", "_rows")

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._rows: dict[tuple[float, tuple[int, ...]], _RowAbsorption] = {}

    def get(self, key: tuple[float, tuple[int, ...]]) -> _RowAbsorption | None:
        return self._rows.get(key)

    def put(self, key: tuple[float, tuple[int, ...]], row: _RowAbsorption) -> None:
        if len(self._rows) >= self._capacity:
            self._rows.clear()
        self._rows[key] = row


def _absorb(
    widths: np.ndarray[Any, Any], needed: tuple[int, ...], reach: float
) -> list[_RowAbsorption]:
    """The recursion of `tick_touch_probabilities` for bands of `widths` (in units of one step's
    sd), all rows as one batched FFT, keeping R_n for each n in `needed`."""
    # Each row's own grid: its band edges fall on nodes `origin` and `origin + points[i]`, so a
    # cell priced alone gets the same grid as in a batch (only the zero padding differs).
    points = np.clip(np.ceil(widths / TICK_GRID_STEP), 2, _MAX_BAND_POINTS).astype(np.int64)
    h = widths / points
    origin = math.ceil(reach / float(h.min()))
    size_n = origin + int((points + np.ceil(reach / h)).max()) + 1
    half_kernel = math.ceil(_KERNEL_REACH_SD / float(h.min()))
    fft_n = _fft_size(size_n + half_kernel)
    # The unit Gaussian on each row's grid, wrapped around index 0 (circular = linear here:
    # fft_n ≥ size_n + half_kernel, and R is ~0 near both ends of the grid).
    offsets = np.zeros(fft_n)
    offsets[: half_kernel + 1] = np.arange(half_kernel + 1)
    offsets[fft_n - half_kernel :] = np.arange(-half_kernel, 0)
    kernel = (h[:, None] / _SQRT_TWO_PI) * np.exp(-0.5 * (offsets[None, :] * h[:, None]) ** 2)
    kernel[:, half_kernel + 1 : fft_n - half_kernel] = 0.0
    kernel_f = np.fft.rfft(kernel, axis=1)
    row_ids = np.arange(len(widths))
    top = origin + points  # per row: the node on the band's upper edge
    index = np.arange(size_n)[None, :]
    inside = (index > origin) & (index < top[:, None])
    absorbed: dict[int, np.ndarray[Any, Any]] = {}
    spread = np.zeros((len(widths), size_n))  # E[R_m(v + Z)]: the smooth part outside the band
    for m in range(1, needed[-1] + 1):
        r = spread
        r[inside] = 1.0
        r[:, origin] = 0.5 * (1.0 + r[:, origin])
        r[row_ids, top] = 0.5 * (1.0 + r[row_ids, top])
        if m in needed:
            absorbed[m] = r.copy()
        if m < needed[-1]:
            spread = np.fft.irfft(np.fft.rfft(r, fft_n, axis=1) * kernel_f, fft_n, axis=1)
            spread = spread[:, :size_n]
    return [
        _RowAbsorption(float(h[i]), origin, {n: absorbed[n][i] for n in needed})
        for i in range(len(widths))
    ]


def _fft_size(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n: pocketfft is fastest on those."""
    best = 1 << (n - 1).bit_length()
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < best:
                if p5 >= n:
                    best = p5
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


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


class TickInterval:
    """The effective tick interval of a stream: an EWMA of the gaps between tick timestamps.

    For a regular feed it is the cadence exactly; for an irregular, gap-free stream (an exchange's
    trades) it is the mean gap, and the grid prices that stream as if its ticks came regularly at
    that interval (docs/pricing.md says what that approximation costs). Each positive gap counts
    with weight `1/GAP_WEIGHT`; a tick at or before the previous one adds no monitoring moment of
    its own (same-millisecond trades are one observation for pricing) and is skipped. A gap
    longer than `cap_ms` — a feed outage, which voids bets anyway — counts as `cap_ms`, so one
    outage cannot make the grid assume minutes between ticks; the estimate is at least 1 ms.
    """

    GAP_WEIGHT = 32  # ~ the last 32 gaps: 8 s of a 250 ms feed, under a second of a busy exchange

    __slots__ = ("_cap", "_last_ts", "_mean")

    def __init__(self, initial_ms: int, cap_ms: int) -> None:
        if initial_ms <= 0 or cap_ms <= 0:
            raise ValueError("initial_ms and cap_ms must be positive")
        self._mean = float(min(initial_ms, cap_ms))
        self._cap = cap_ms
        self._last_ts: int | None = None

    @property
    def interval_ms(self) -> int:
        """The estimate rounded to a whole millisecond (what the grid publishes and prices)."""
        return max(1, round(self._mean))

    def update(self, ts_ms: int) -> int:
        last = self._last_ts
        if last is None or ts_ms > last:
            if last is not None:
                gap = min(ts_ms - last, self._cap)
                self._mean += (gap - self._mean) / self.GAP_WEIGHT
            self._last_ts = ts_ms
        return self.interval_ms
