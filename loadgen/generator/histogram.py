"""A latency histogram in the HdrHistogram style: log-linear buckets, fixed relative precision.

It decides how a latency in microseconds is bucketed and how percentiles are read back; it leaves
to its caller what is measured and from when (the load generator measures from the *intended*
send time, see `loadgen.generator.engine`).

Layout: values below `2**precision_bits` are counted exactly; above that, every power-of-two range
is split into `2**(precision_bits - 1)` equal buckets, so a reported value is never more than
`2**-(precision_bits - 1)` above the true one (7 bits: 1.6 %). Recording is a handful of integer
operations and one list store: cheap enough for the generator's hot loop. Percentiles report the
*highest* value equivalent to the bucket, as HdrHistogram does, so they err on the pessimistic
side. Min, max, count and sum are exact.
"""

from __future__ import annotations

import math
from typing import Any


class Histogram:
    """Counts of non-negative integer values (microseconds by convention)."""

    __slots__ = ("_counts", "_half", "_max", "_min", "_top", "bits", "count", "total")

    def __init__(self, precision_bits: int = 7) -> None:
        if not 2 <= precision_bits <= 16:
            raise ValueError("precision_bits must be within 2..16")
        self.bits = precision_bits
        self._half = 1 << (precision_bits - 1)
        self._top = 1 << precision_bits
        self._counts: list[int] = [0] * self._top
        self.count = 0
        self.total = 0
        self._min = 0
        self._max = 0

    def index_of(self, value: int) -> int:
        """The bucket a value lands in (exact below `2**bits`, log-linear above)."""
        if value < self._top:
            return value
        shift = value.bit_length() - self.bits
        return shift * self._half + (value >> shift)

    def highest_equivalent(self, index: int) -> int:
        """The largest value that lands in bucket `index`."""
        if index < self._top:
            return index
        shift = index // self._half - 1
        mantissa = index - shift * self._half
        return ((mantissa + 1) << shift) - 1

    def lowest_equivalent(self, index: int) -> int:
        if index < self._top:
            return index
        shift = index // self._half - 1
        return (index - shift * self._half) << shift

    def record(self, value: int, times: int = 1) -> None:
        if value < 0:
            value = 0
        i = self.index_of(value)
        counts = self._counts
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += times
        if self.count == 0 or value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        self.count += times
        self.total += value * times

    def merge(self, other: Histogram) -> None:
        if other.bits != self.bits:
            raise ValueError("cannot merge histograms of different precision")
        if other.count == 0:
            return
        if len(other._counts) > len(self._counts):
            self._counts.extend([0] * (len(other._counts) - len(self._counts)))
        for i, n in enumerate(other._counts):
            if n:
                self._counts[i] += n
        self._min = other._min if self.count == 0 else min(self._min, other._min)
        self._max = max(self._max, other._max)
        self.count += other.count
        self.total += other.total

    @property
    def min(self) -> int:
        return self._min

    @property
    def max(self) -> int:
        return self._max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> int:
        """The value at percentile `q` (0 < q ≤ 100): the smallest bucket whose cumulative count
        reaches `ceil(q/100 · count)`, reported as that bucket's highest value (capped at the
        exact max). 0 when empty."""
        if self.count == 0:
            return 0
        if not 0 < q <= 100:
            raise ValueError("percentile must be within (0, 100]")
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                return min(self.highest_equivalent(i), self._max)
        return self._max

    def summary_ms(self) -> dict[str, float]:
        """Count and the usual percentiles in milliseconds, for reports."""
        return {
            "count": self.count,
            "min_ms": self._min / 1000.0,
            "mean_ms": round(self.mean / 1000.0, 3),
            "p50_ms": self.percentile(50) / 1000.0,
            "p90_ms": self.percentile(90) / 1000.0,
            "p95_ms": self.percentile(95) / 1000.0,
            "p99_ms": self.percentile(99) / 1000.0,
            "p999_ms": self.percentile(99.9) / 1000.0,
            "max_ms": self._max / 1000.0,
        }

    def to_json(self) -> dict[str, Any]:
        """Sparse buckets (`[[index, count], …]`) so reports from several runs can be merged."""
        return {
            "precision_bits": self.bits,
            "min": self._min,
            "max": self._max,
            "total": self.total,
            "buckets": [[i, n] for i, n in enumerate(self._counts) if n],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        h = cls(int(data["precision_bits"]))
        for i, n in data["buckets"]:
            if i >= len(h._counts):
                h._counts.extend([0] * (i + 1 - len(h._counts)))
            h._counts[i] += n
            h.count += n
        h._min = int(data["min"])
        h._max = int(data["max"])
        h.total = int(data["total"])
        return h
