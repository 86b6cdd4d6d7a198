"""How the server's Python heap is collected once it serves: it decides the cyclic collector's
policy and leaves everything else (reference counting frees almost every object) to CPython.

Measured under bench load (issue 12, 200 bets/s, CPython 3.11 defaults `(700, 10, 10)`): the
collector took ≈ 18 % of the server's CPU — 1,400 young collections, 130 middle ones and 12
full ones in 45 s — and each full collection paused the event loop for 110–140 ms of CPU (the
sessions, connections and open bets made after startup are long-lived and were walked again and
again). With `(10_000, 10, 100)` the same load spent ≈ 4× less CPU in it and saw one full
collection. Why these numbers:

- `GEN0 = 10_000`: a young collection every ~30 bets instead of every ~2 (a bet allocates a few
  hundred objects across Hypercorn, Quart, trio and tap). Its pause grows with the young
  generation — a few milliseconds — which stays far inside the 100 ms p99 budget.
- `GEN1 = 10` (the default): a middle collection every 100,000 allocations.
- `GEN2 = 100`: a full collection at most every 100 middle ones (10 M allocations, minutes at
  full load) instead of every 10: full collections walk every long-lived object made since
  startup, so they are the pauses that reach p99.

Everything alive at startup is frozen first (`gc.freeze()`): it lives as long as the process,
and a full collection then never walks it (measured before: 70–160 ms pauses over ~245k startup
objects).
"""

from __future__ import annotations

import gc

GEN0 = 10_000
GEN1 = 10
GEN2 = 100


def settle() -> None:
    """Call once the server is up: collect, freeze what exists, and set the thresholds above."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
