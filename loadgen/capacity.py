"""Capacity search: the highest arrival rate a target sustains, found with few probes.

It decides which rate to probe next from the verdicts so far: grow geometrically from a start
rate until a probe fails (or shrink until one passes), then bisect the bracket until it is
narrower than `precision` or the probe budget is spent. It leaves to its caller what a probe is
and what "sustains" means (the benches use: p99 ≤ 100 ms, no errors, the generator kept up).

Pure and synchronous, so the search itself is tested without servers: feed it verdicts, read
`next_rate()`.
"""

from __future__ import annotations

import msgspec


class Probe(msgspec.Struct, frozen=True):
    rate: float
    passed: bool


class CapacitySearch:
    def __init__(
        self,
        start: float,
        *,
        growth: float = 2.0,
        precision: float = 0.1,
        max_probes: int = 8,
        floor: float = 10.0,
        ceiling: float = 1_000_000.0,
    ) -> None:
        if start <= 0 or growth <= 1.0 or precision <= 0 or max_probes < 1:
            raise ValueError("need start > 0, growth > 1, precision > 0, max_probes >= 1")
        self.start = start
        self.growth = growth
        self.precision = precision
        self.max_probes = max_probes
        self.floor = floor
        self.ceiling = ceiling
        self.probes: list[Probe] = []

    @property
    def best(self) -> float:
        """The highest rate that passed (0 when none did)."""
        return max((p.rate for p in self.probes if p.passed), default=0.0)

    @property
    def lowest_failure(self) -> float | None:
        fails = [p.rate for p in self.probes if not p.passed]
        return min(fails) if fails else None

    def observe(self, rate: float, passed: bool) -> None:
        self.probes.append(Probe(rate, passed))

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the answer is known well enough."""
        if len(self.probes) >= self.max_probes:
            return None
        if not self.probes:
            return float(round(min(self.start, self.ceiling)))
        lo = self.best
        hi = self.lowest_failure
        if hi is None:  # nothing failed yet: grow
            if lo >= self.ceiling:
                return None
            return float(round(min(lo * self.growth, self.ceiling)))
        if lo == 0.0:  # nothing passed yet: shrink
            nxt = hi / self.growth
            return None if nxt < self.floor else float(round(nxt))
        if hi <= lo or (hi - lo) / lo <= self.precision:
            return None
        mid = float(round((lo + hi) / 2.0))
        return None if mid in (lo, hi) else mid
