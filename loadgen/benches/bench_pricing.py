"""What one full grid costs: `GridBook.refresh` on the default market (12 columns × 16 rows).

The grid is priced by the discrete-tick recursion of `tap.pricing.tick_touch_probabilities`; the
issue that introduced it set a budget of 20 ms per full grid on this machine. This bench refreshes
a book `rounds` times, each from a new tick (price and σ moved, so nothing is cached), and reports
wall and CPU time per grid: median, p95 and best. On a shared machine noise only slows a run
down, so `best` and CPU time are the figures to compare; wall p95 says what a busy neighbour
costs. A second set times the dense-stream case (40 ms ticks: 125 per window, priced on the coarse
schedule of 64 steps). A third set times admission's per-cell requote (`GridBook.quote_tick`
on a tick newer than the grid, σ kept): CPU per distinct cell, and per tick for 40 distinct cells
(past `CELL_REQUOTES_PER_TICK` of them the book requotes the whole grid instead).

    python -m loadgen.benches.bench_pricing [--rounds 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from tap.config import MarketConfig, PricingConfig
from tap.quotes import CELL_REQUOTES_PER_TICK, GridBook

EPOCH = 346_458_010 * 5_000


def run(
    rounds: int = 200, interval_ms: int = 250, seed: int = 1, *, requote: bool = False
) -> dict[str, Any]:
    """Full grids (σ new every round: refresh_ms = 1) or, with `requote`, admission's requotes
    (a new price, σ kept: the rows' recursions come from the cache)."""
    rng = random.Random(seed)
    pricing = PricingConfig(refresh_ms=10**9 if requote else 1)
    book = GridBook(MarketConfig(), pricing, interval_ms)
    book.refresh(EPOCH, 10_000_000, EPOCH, 0.6, "closed")  # warm numpy's FFT plans
    walls: list[float] = []
    cpus: list[float] = []
    now = EPOCH
    price = 10_000_000
    for _ in range(rounds):
        now += 250
        price += rng.randint(-600, 600)
        sigma = 0.6 * rng.uniform(0.8, 1.25)
        wall, cpu = time.perf_counter(), time.process_time()
        book.refresh(now, price, now - rng.randint(0, 200), sigma, "closed", force=True)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    walls.sort()
    view = book.view
    assert view is not None and len(view.cells) == 12 * 16

    def ms(x: float) -> float:
        return round(1000 * x, 2)

    return {
        "kind": "requote" if requote else "full grid",
        "interval_ms": interval_ms,
        "cells": len(view.cells),
        "rounds": rounds,
        "wall_ms": {
            "median": ms(statistics.median(walls)),
            "p95": ms(walls[int(0.95 * (len(walls) - 1))]),
            "best": ms(walls[0]),
        },
        "cpu_ms_mean": ms(sum(cpus) / len(cpus)),
    }


def run_cells(
    rounds: int = 200, interval_ms: int = 250, seed: int = 1, cells_per_tick: int = 40
) -> dict[str, Any]:
    """Admission's requotes cell by cell: each round the grid is priced from one tick (untimed,
    as the market actor keeps it), then a newer tick comes (σ kept) and `quote_tick` is asked for
    `cells_per_tick` distinct placeable cells, in random order. CPU per tick for all of them, and
    per cell for the first `CELL_REQUOTES_PER_TICK` (the ones priced alone)."""
    assert rounds < 2_000, "the rounds' ticks must stay inside one column"
    rng = random.Random(seed)
    book = GridBook(MarketConfig(), PricingConfig(refresh_ms=10**9), interval_ms)
    now = EPOCH + 1_000
    price = 10_000_000
    book.refresh(now, price, now, 0.6, "closed")
    per_cell: list[float] = []
    per_tick: list[float] = []
    alone = min(cells_per_tick, CELL_REQUOTES_PER_TICK)
    for _ in range(rounds):
        now += 1  # ticks 1 ms apart, all in one column: no round is a roll
        book.refresh(now, price, now, 0.6, "closed", force=True)
        now += 1
        price += rng.randint(-600, 600)
        view = book.view
        assert view is not None
        ids = [c.cell_id for c in view.cells if c.placeable]
        asked = rng.sample(ids, min(cells_per_tick, len(ids)))
        cpu = time.process_time()
        for k, cell_id in enumerate(asked):
            book.quote_tick(cell_id, now, price, now, 0.6, "closed")
            if k + 1 == alone:
                per_cell.append((time.process_time() - cpu) / alone)
        per_tick.append(time.process_time() - cpu)

    def us(x: float) -> float:
        return round(1e6 * x, 1)

    return {
        "kind": "per-cell requote",
        "interval_ms": interval_ms,
        "rounds": rounds,
        "cells_per_tick": cells_per_tick,
        "cells_alone": CELL_REQUOTES_PER_TICK,
        "cpu_us_per_cell_mean": us(sum(per_cell) / len(per_cell)),
        "cpu_us_per_tick_mean": us(sum(per_tick) / len(per_tick)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [
        run(args.rounds, 250),
        run(args.rounds, 250, requote=True),
        run(max(20, args.rounds // 4), 40),
        run(max(20, args.rounds // 4), 40, requote=True),
    ]
    cells = [run_cells(args.rounds, 250), run_cells(args.rounds, 250, cells_per_tick=1)]
    if args.json:
        print(json.dumps(results + cells, indent=2))
        return
    for r in results:
        w = r["wall_ms"]
        print(
            f"{r['kind']} of {r['cells']} cells, ticks every {r['interval_ms']} ms: wall median "
            f"{w['median']} ms, p95 {w['p95']} ms, best {w['best']} ms; CPU {r['cpu_ms_mean']} ms"
        )
    for c in cells:
        print(
            f"per-cell requote, ticks every {c['interval_ms']} ms, {c['cells_per_tick']} distinct "
            f"cells a tick (alone up to {c['cells_alone']}): CPU {c['cpu_us_per_cell_mean']} µs "
            f"a cell, {c['cpu_us_per_tick_mean']} µs a tick"
        )


if __name__ == "__main__":
    main()
