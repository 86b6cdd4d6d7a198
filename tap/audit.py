"""The return-to-player audit: does a player who bets on every placeable cell get back 1 − edge?

Decides nothing for the live server; it *measures* the fairness promise of API.md ("a player's
expected return is 1 − edge under the win rule above") through the project's own code paths, so a
mistake anywhere along the way shows up as a number: the simulated feed's path generator
(`tap.feeds.GbmSim`), the volatility estimator (`tap.pricing.EwmaVolatility`), the quote grid
(`tap.quotes.GridBook`, which prices with `tap.pricing`) and the resolver core
(`tap.resolver.ResolverIndex`). It reads no clock and does no I/O: `tap audit rtp`
(tap/runtime/cli.py) runs it and prints the report.

One run walks one simulated tick path. Every `sample_every` ticks it asks each book for the grid at
that tick and stakes one unit on every placeable cell; the resolver settles every bet on the
following ticks exactly as it settles real bets. Three books are audited side by side on the same
path:

- `ewma`: σ from the estimator, as the server quotes;
- `true_sigma`: σ fixed at the simulator's true value (isolates the pricing model from the
  estimator's noise);
- `stale_quote`: the adverse player of API.md's quote-age question: the quote is the one computed
  at the *previous* tick, and the player, having seen the newest tick, bets only on the cells that
  tick moved toward. The server never admits a bet on such a quote (admission requotes from the
  newest tick, `actors/market.py`); this row measures what that rule is worth.

Realized RTP is Σpayout / Σstake with a 95 % confidence interval by a circular moving-block
bootstrap over the bets' columns (bets on one column share a path, and neighbouring columns share
its pieces, so columns are resampled in blocks of `2 × columns_ahead`), overall and broken down by
column offset (`col − current column` at the quote) and row distance (`row − the row holding the
quoted price`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tap.config import Config, MarketConfig
from tap.feeds import GbmSim
from tap.messages import GridView
from tap.pricing import EwmaVolatility
from tap.quotes import GridBook, fixed_monitoring_interval
from tap.resolver import OpenBet, ResolverIndex

STAKE = 1_000_000  # units: payout = STAKE * m // 10000 is exact for every multiplier
MODES = ("ewma", "true_sigma", "stale_quote")
# The simulated epoch starts here (2023-11-14), far from 0 so times look like real ones.
EPOCH_MS = 1_700_000_000_000
WARMUP_MS = 300_000  # the estimator runs 5 minutes before the first bet
BOOTSTRAP_REPLICATES = 1000


@dataclass
class _Ledger:
    """Per-mode bet bookkeeping, indexed by the bet's integer id."""

    column: list[int] = field(default_factory=list)  # the bet's cell column
    offset: list[int] = field(default_factory=list)  # col − current column at the quote
    distance: list[int] = field(default_factory=list)  # row − the quoted price's row
    payout: list[int] = field(default_factory=list)
    void: int = 0
    settled: int = 0


@dataclass(frozen=True)
class Estimate:
    """A realized return with its bootstrap interval and the bets behind it."""

    rtp: float
    lo: float
    hi: float
    bets: int

    def as_dict(self) -> dict[str, Any]:
        return {"rtp": self.rtp, "ci95": [self.lo, self.hi], "bets": self.bets}


@dataclass(frozen=True)
class ModeReport:
    overall: Estimate
    by_offset: dict[int, Estimate]
    by_distance: dict[int, Estimate]

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.as_dict(),
            "by_column_offset": {str(k): v.as_dict() for k, v in self.by_offset.items()},
            "by_row_distance": {str(k): v.as_dict() for k, v in self.by_distance.items()},
        }


@dataclass(frozen=True)
class AuditReport:
    target: float  # 1 − edge
    seed: int
    ticks: int
    sim_sigma: float
    tick_ms: int
    monitoring_interval_ms: int
    modes: dict[str, ModeReport]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "seed": self.seed,
            "ticks": self.ticks,
            "sim_sigma": self.sim_sigma,
            "tick_ms": self.tick_ms,
            "monitoring_interval_ms": self.monitoring_interval_ms,
            "modes": {k: v.as_dict() for k, v in self.modes.items()},
        }


def run_rtp_audit(
    cfg: Config,
    *,
    bets: int,
    seed: int,
    sample_every: int = 103,
    modes: tuple[str, ...] = MODES,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> AuditReport:
    """Simulate until the `ewma` book has placed at least `bets` bets, then report.

    `sample_every` ticks between two betting moments. 103 (25.75 s at 250 ms) is prime to the 20
    ticks of a default column, so the quote's phase inside its column cycles through every tick
    position; and it spreads a million bets over 41 hours of path — bets on one column share its
    path, so the interval narrows with path time, not with bets (at 23, a million bets span 9
    hours and the 95 % interval is ±0.015; at 103 it is about ±0.007).
    """
    if bets <= 0 or sample_every < 2:
        raise ValueError("bets must be positive and sample_every at least 2")
    market = cfg.markets[0]
    feed = cfg.feed
    tick_ms = feed.sim_tick_ms
    sim = GbmSim(seed, feed.sim_sigma, tick_ms, feed.sim_start_price)
    volatility = EwmaVolatility(cfg.pricing)
    # The interval the server would price with; a config naming an exchange feed is audited on
    # the simulator's cadence, since the simulator is what this audit can run.
    interval = fixed_monitoring_interval(cfg) or tick_ms
    books = {mode: GridBook(market, cfg.pricing, interval) for mode in modes}
    resolvers = {
        mode: ResolverIndex(market.symbol, market.column_ms, market.row_height, feed.max_gap_ms)
        for mode in modes
    }
    ledgers = {mode: _Ledger() for mode in modes}
    # A seeded phase: ticks do not sit on column boundaries unless the seed says so.
    start = EPOCH_MS + (seed * 7919) % tick_ms
    warmup_ticks = WARMUP_MS // tick_ms
    stale: GridView | None = None
    placed_main = 0
    i = 0
    prev_price = 0
    while True:
        ts = start + i * tick_ms
        price = sim.next(ts)
        sigma = volatility.update(ts, price)
        for mode, resolver in resolvers.items():
            _settle(ledgers[mode], resolver.on_tick(ts, price))
        betting = placed_main < bets
        if i >= warmup_ticks and betting:
            phase = (i - warmup_ticks) % sample_every
            if "stale_quote" in books and phase == sample_every - 1:
                # The quote the adverse player will bet on, one tick before it bets.
                stale = books["stale_quote"].refresh(ts, price, ts, sigma, "closed")
            if phase == 0:
                for mode, book in books.items():
                    if mode == "stale_quote":
                        if stale is not None and price != prev_price:
                            _bet_toward(stale, price, ts, market, resolvers[mode], ledgers[mode])
                        continue
                    s = feed.sim_sigma if mode == "true_sigma" else sigma
                    view = book.refresh(ts, price, ts, s, "closed")
                    n = _bet_all(view, ts, market, resolvers[mode], ledgers[mode])
                    if mode == "ewma" or "ewma" not in books:
                        placed_main += n
        elif not betting and all(r.open_bets == 0 for r in resolvers.values()):
            break
        prev_price = price
        i += 1
    reports = {
        mode: _report(ledgers[mode], market, seed, replicates)
        for mode in modes
        if ledgers[mode].settled
    }
    return AuditReport(
        target=(10_000 - market.house_edge_bps) / 10_000,
        seed=seed,
        ticks=i + 1,
        sim_sigma=feed.sim_sigma,
        tick_ms=tick_ms,
        monitoring_interval_ms=interval,
        modes=reports,
    )


def _place(
    view: GridView,
    cell_index: int,
    now_ms: int,
    market: MarketConfig,
    resolver: ResolverIndex,
    ledger: _Ledger,
) -> None:
    cell = view.cells[cell_index]
    col = cell.t_start // market.column_ms
    row = cell.price_lo // market.row_height
    bet_id = len(ledger.column)
    ledger.column.append(col)
    ledger.offset.append(col - now_ms // market.column_ms)
    ledger.distance.append(row - view.price // market.row_height)
    ledger.payout.append(-1)
    _settle(
        ledger,
        resolver.add(
            OpenBet(
                bet_id=str(bet_id),
                address="audit",
                col=col,
                row=row,
                t_start=cell.t_start,
                t_end=cell.t_end,
                price_lo=cell.price_lo,
                price_hi=cell.price_hi,
                amount=STAKE,
                multiplier_bps=cell.multiplier_bps,
            )
        ),
    )


def _bet_all(
    view: GridView, now_ms: int, market: MarketConfig, resolver: ResolverIndex, ledger: _Ledger
) -> int:
    n = 0
    for k, cell in enumerate(view.cells):
        if cell.placeable:
            _place(view, k, now_ms, market, resolver, ledger)
            n += 1
    return n


def _bet_toward(
    view: GridView,
    price: int,
    now_ms: int,
    market: MarketConfig,
    resolver: ResolverIndex,
    ledger: _Ledger,
) -> None:
    """The adverse player: stake only on the cells the newest tick moved toward since `view`."""
    up = price > view.price
    for k, cell in enumerate(view.cells):
        if not cell.placeable:
            continue
        # Re-check placeability at `now_ms`: the column rule moves with the clock.
        col = cell.t_start // market.column_ms
        if col <= now_ms // market.column_ms + market.lockout_columns:
            continue
        if (up and cell.price_lo > view.price) or (not up and cell.price_hi < view.price):
            _place(view, k, now_ms, market, resolver, ledger)


def _settle(ledger: _Ledger, outcomes: list[Any]) -> None:
    for outcome in outcomes:
        k = int(outcome.bet_id)
        if outcome.status == "void":
            ledger.void += 1
            ledger.payout[k] = -2
        else:
            ledger.payout[k] = outcome.payout
        ledger.settled += 1


def _report(ledger: _Ledger, market: MarketConfig, seed: int, replicates: int) -> ModeReport:
    payout = np.asarray(ledger.payout, dtype=np.float64)
    keep = payout >= 0  # settled, not void
    payout = payout[keep] / STAKE
    column = np.asarray(ledger.column)[keep]
    offset = np.asarray(ledger.offset)[keep]
    distance = np.asarray(ledger.distance)[keep]
    first = int(column.min())
    n_cols = int(column.max()) - first + 1
    col_idx = column - first
    block = 2 * market.columns_ahead
    rng = np.random.default_rng(seed)
    n_blocks = max(1, math.ceil(n_cols / block))
    starts = rng.integers(0, n_cols, size=(replicates, n_blocks))

    def estimate(mask: np.ndarray[Any, Any]) -> Estimate:
        stakes = np.bincount(col_idx[mask], minlength=n_cols).astype(np.float64)
        pays = np.bincount(col_idx[mask], weights=payout[mask], minlength=n_cols)

        # Circular block sums: block_sum[s] = Σ of columns s … s+block−1 (mod n_cols).
        def block_sums(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            wrapped = np.concatenate([x, np.resize(x, block - 1)])  # resize repeats cyclically
            ext = np.concatenate([[0.0], np.cumsum(wrapped)])
            sums: np.ndarray[Any, Any] = ext[block : block + n_cols] - ext[:n_cols]
            return sums

        bs_stake = block_sums(stakes)[starts].sum(axis=1)
        bs_pay = block_sums(pays)[starts].sum(axis=1)
        ratio = bs_pay[bs_stake > 0] / bs_stake[bs_stake > 0]
        total = float(stakes.sum())
        rtp = float(pays.sum()) / total if total else math.nan
        lo, hi = np.percentile(ratio, [2.5, 97.5]) if ratio.size else (math.nan, math.nan)
        return Estimate(rtp, float(lo), float(hi), int(total))

    everything = np.ones(payout.size, dtype=bool)
    return ModeReport(
        overall=estimate(everything),
        by_offset={int(k): estimate(offset == k) for k in np.unique(offset)},
        by_distance={int(k): estimate(distance == k) for k in np.unique(distance)},
    )


def format_report(report: AuditReport) -> str:
    """The report as Markdown tables (the shape docs/pricing.md carries)."""
    lines = [
        f"target 1 − edge = {report.target:.4f}; seed {report.seed}; {report.ticks} ticks of "
        f"{report.tick_ms} ms; simulated σ {report.sim_sigma}; grid monitoring_interval_ms "
        f"{report.monitoring_interval_ms}",
        "",
        "| book | bets | RTP | 95 % CI |",
        "|---|---:|---:|---|",
    ]
    for mode, r in report.modes.items():
        o = r.overall
        lines.append(f"| {mode} | {o.bets:,} | {o.rtp:.4f} | [{o.lo:.4f}, {o.hi:.4f}] |")
    for title, attr in (("column offset", "by_offset"), ("row distance", "by_distance")):
        modes = list(report.modes)
        keys = sorted({k for r in report.modes.values() for k in getattr(r, attr)})
        lines += ["", f"| {title} | " + " | ".join(modes) + " |"]
        lines.append("|---:|" + "---|" * len(modes))
        for k in keys:
            cells = []
            for mode in modes:
                e = getattr(report.modes[mode], attr).get(k)
                cells.append(
                    "" if e is None else f"{e.rtp:.3f} [{e.lo:.3f}, {e.hi:.3f}] ({e.bets:,})"
                )
            lines.append(f"| {k:+d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
