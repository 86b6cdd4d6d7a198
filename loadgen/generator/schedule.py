"""Open-loop arrival schedule: when each request *should* be sent, independent of the server.

It decides the send times implied by a list of stages (a piecewise-linear rate curve r(t)): the
k-th arrival is due when the expected count N(t) = ∫₀ᵗ r reaches k (uniform spacing, like k6's
arrival-rate executors), or at the k-th point of a Poisson process with that rate (exponential
gaps in N-space mapped back through N⁻¹). It leaves to `loadgen.generator.engine` the sleeping and
dispatching, and to the caller what a request is.

Why open loop: a closed-loop generator (send, wait, send) slows down when the server does, so a
stall hides itself — "coordinated omission". Here the schedule never looks at responses, and the
latency of every request is measured from its due time, so a 2 s stall shows up as 2 s of
latency on every request that should have gone out during it.

Pure: times are seconds from the start of the run; nothing here reads a clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import msgspec

from loadgen.generator.scenario import Stage


class Segment(msgspec.Struct, frozen=True):
    """Rate goes linearly from r0 to r1 over [t0, t0 + seconds); n0 arrivals are due before t0."""

    kind: str
    t0: float
    seconds: float
    r0: float
    r1: float
    n0: float

    @property
    def t1(self) -> float:
        return self.t0 + self.seconds

    @property
    def count(self) -> float:
        return (self.r0 + self.r1) / 2.0 * self.seconds

    def rate_at(self, t: float) -> float:
        if self.seconds <= 0:
            return self.r1
        f = min(1.0, max(0.0, (t - self.t0) / self.seconds))
        return self.r0 + (self.r1 - self.r0) * f

    def offset_of(self, m: float) -> float:
        """Seconds into the segment at which `m` arrivals of it are due (0 ≤ m ≤ count).

        Solves r0·τ + (r1 − r0)·τ²/(2·D) = m in the cancellation-free form
        τ = 2m / (r0 + √(r0² + 2·(r1 − r0)·m / D)), valid for rising, falling and flat rates.
        """
        if m <= 0:
            return 0.0
        a2 = 2.0 * (self.r1 - self.r0) / self.seconds
        disc = self.r0 * self.r0 + a2 * m
        root = math.sqrt(max(0.0, disc))
        denom = self.r0 + root
        if denom <= 0:
            return self.seconds
        return min(self.seconds, 2.0 * m / denom)


class Schedule:
    """The rate curve of a list of stages, and the send times it implies."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.segments: list[Segment] = []
        t = 0.0
        n = 0.0
        rate = 0.0
        for st in stages:
            seconds = st.seconds
            target = rate if st.target is None else float(st.target)
            start = rate if st.kind == "ramp" else target
            seg = Segment(st.kind, t, seconds, start, target, n)
            self.segments.append(seg)
            t += seconds
            n += seg.count
            rate = target
        self.duration = t
        self.total = n  # expected arrivals over the whole schedule

    def rate_at(self, t: float) -> float:
        for seg in self.segments:
            if t < seg.t1:
                return seg.rate_at(t)
        return self.segments[-1].r1 if self.segments else 0.0

    def segment_index_at(self, t: float) -> int:
        for i, seg in enumerate(self.segments):
            if t < seg.t1:
                return i
        return len(self.segments) - 1

    def expected_count(self, t: float) -> float:
        """N(t): arrivals due in [0, t)."""
        for seg in self.segments:
            if t < seg.t1:
                tau = max(0.0, t - seg.t0)
                slope = (seg.r1 - seg.r0) / seg.seconds if seg.seconds else 0.0
                return seg.n0 + seg.r0 * tau + slope * tau * tau / 2.0
        return self.total

    def time_of(self, n: float) -> float:
        """N⁻¹(n): when the n-th arrival (counting from 0) is due; `duration` if never."""
        for seg in self.segments:
            if n < seg.n0 + seg.count:
                return seg.t0 + seg.offset_of(n - seg.n0)
        return self.duration

    def uniform(self) -> Iterator[float]:
        """Due times of arrivals 0, 1, 2, … : evenly spaced in N, so exactly ⌈N(T)⌉ of them."""
        k = 0
        segs = self.segments
        i = 0
        while i < len(segs):
            seg = segs[i]
            end = seg.n0 + seg.count
            if k >= end:
                i += 1
                continue
            yield seg.t0 + seg.offset_of(k - seg.n0)
            k += 1

    def poisson(self, rng: random.Random) -> Iterator[float]:
        """Due times of a Poisson process with this rate curve (unit-rate gaps in N-space)."""
        n = rng.expovariate(1.0)
        while n < self.total:
            yield self.time_of(n)
            n += rng.expovariate(1.0)
