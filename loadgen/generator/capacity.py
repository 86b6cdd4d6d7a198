"""Capacity search: the highest arrival rate a target sustains, found with few probes.

It decides which rate to probe next from the verdicts so far: grow geometrically from a start
rate until a probe fails (or shrink until one passes), then bisect the bracket until it is
narrower than `precision` or the probe budget is spent. With `confirmations`, the top rate must
then pass that many more times: a rate that passed once and failed on its repeat was a lucky
probe, not a capacity, so it counts as failed and the search settles below it. `sustained` is
the highest rate that passed every probe at it and was confirmed. It leaves to its caller what a
probe is and what "sustains" means (the benches use: p99 ≤ 100 ms, no errors, confirmations keep
up, the generator kept up).

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
        confirmations: int = 0,
    ) -> None:
        if start <= 0 or growth <= 1.0 or precision <= 0 or max_probes < 1 or confirmations < 0:
            raise ValueError(
                "need start > 0, growth > 1, precision > 0, max_probes >= 1, confirmations >= 0"
            )
        self.confirmations = confirmations
        self.start = start
        self.growth = growth
        self.precision = precision
        self.max_probes = max_probes
        self.floor = floor
        self.ceiling = ceiling
        self.probes: list[Probe] = []

    def _failed_rates(self) -> set[float]:
        return {p.rate for p in self.probes if not p.passed}

    def passes_at(self, rate: float) -> int:
        return sum(1 for p in self.probes if p.rate == rate and p.passed)

    @property
    def best(self) -> float:
        """The highest rate that passed every probe at it (0 when none did)."""
        failed = self._failed_rates()
        return max((p.rate for p in self.probes if p.passed and p.rate not in failed), default=0.0)

    @property
    def sustained(self) -> float:
        """The highest rate that passed `1 + confirmations` probes and failed none (0: none)."""
        failed = self._failed_rates()
        need = 1 + self.confirmations
        return max(
            (
                p.rate
                for p in self.probes
                if p.passed and p.rate not in failed and self.passes_at(p.rate) >= need
            ),
            default=0.0,
        )

    @property
    def lowest_failure(self) -> float | None:
        """The lowest failed rate above `best` (a failure below it was noise the repeats
        outvoted; a rate that passed and then failed is a failure)."""
        lo = self.best
        fails = [r for r in self._failed_rates() if r > lo]
        return min(fails) if fails else None

    def observe(self, rate: float, passed: bool) -> None:
        self.probes.append(Probe(rate, passed))

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the answer is known well enough.

        `max_probes` bounds the search; confirmations may take up to `2 × confirmations` more
        (a failed repeat moves the top down once, and the rate below is repeated in turn).
        """
        if len(self.probes) >= self.max_probes:
            if len(self.probes) >= self.max_probes + 2 * self.confirmations or not self.best:
                return None
            return self._confirm(self.best)
        if not self.probes:
            return float(round(min(self.start, self.ceiling)))
        lo = self.best
        hi = self.lowest_failure
        if hi is None:  # nothing failed yet: grow
            if lo >= self.ceiling:
                return self._confirm(lo)
            return float(round(min(lo * self.growth, self.ceiling)))
        if lo == 0.0:  # nothing passed yet: shrink
            nxt = hi / self.growth
            return None if nxt < self.floor else float(round(nxt))
        mid = float(round((lo + hi) / 2.0))
        if hi <= lo or (hi - lo) / lo <= self.precision or mid in (lo, hi):
            return self._confirm(lo)
        return mid

    def _confirm(self, lo: float) -> float | None:
        """The bracket is narrow enough: repeat its top until it has its confirmations."""
        return lo if self.passes_at(lo) < 1 + self.confirmations else None
