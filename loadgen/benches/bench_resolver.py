"""What a tick costs the resolver index with 1 k versus 100 k open bets in *other* cells.

DESIGN rule 9 says a tick's cost must not depend on how many bets are open elsewhere. This bench
runs the same tick stream (a random walk, one tick every `tick_ms`, crossing many column ends)
against the same foreground bets — cells the walk touches, misses and closes, identical in both
runs — once with `few` and once with `many` background bets parked where the stream never
decides them: other rows of the column the stream ends in, and columns after it. The goal is
`ratio` (many / few, per-tick time) ≤ 2.

Two measures, side by side: wall time per tick (best of `rounds`, each on a freshly built index:
on a shared machine noise only slows a run down) and Python bytecodes per tick over a sample (a
count of work, independent of the machine and its noise). `run` returns the figures; the loadgen
CLI prints or stores them.
"""

from __future__ import annotations

import json
import random
import sys
import time
from types import FrameType
from typing import Any

from tap.resolver import OpenBet, ResolverIndex

COLUMN_MS = 5_000
ROW_HEIGHT = 1_000
MAX_GAP_MS = 2_000
START_COL = 346_458_012
START_PRICE = 10_000_000  # 100000.00 USD in increments
FOREGROUND_PER_COLUMN = 4


def _bet(bet_id: str, col: int, row: int) -> OpenBet:
    t_start = col * COLUMN_MS
    return OpenBet(
        bet_id=bet_id,
        address="0x" + "ab" * 20,
        col=col,
        row=row,
        t_start=t_start,
        t_end=t_start + COLUMN_MS,
        price_lo=row * ROW_HEIGHT,
        price_hi=(row + 1) * ROW_HEIGHT,
        amount=1_000_000,
        multiplier_bps=25_000,
    )


def _ticks(count: int, tick_ms: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    ts, price = START_COL * COLUMN_MS, START_PRICE
    out = []
    for _ in range(count):
        out.append((ts, price))
        ts += tick_ms
        price += rng.randint(-150, 150)
    return out


def _foreground(ticks: list[tuple[int, int]], seed: int) -> list[OpenBet]:
    """Bets in every column the stream crosses, on rows near the walk: won, lost, decided."""
    rng = random.Random(seed)
    first, last = ticks[0][0] // COLUMN_MS, ticks[-1][0] // COLUMN_MS
    near = START_PRICE // ROW_HEIGHT
    return [
        _bet(f"fg-{col}-{i}", col, near + rng.randint(-3, 3))
        for col in range(first, last)
        for i in range(FOREGROUND_PER_COLUMN)
    ]


def _background(count: int, ticks: list[tuple[int, int]]) -> list[OpenBet]:
    """Bets the stream never decides: half on far rows of the column it ends in, half in the
    columns after it."""
    final = ticks[-1][0] // COLUMN_MS
    far = START_PRICE // ROW_HEIGHT + 1_000
    bets = []
    for n in range(count):
        if n % 2:
            bets.append(_bet(f"bg-{n}", final, far + n // 2))
        else:
            bets.append(_bet(f"bg-{n}", final + 1 + (n // 2) % 500, far + n // 1_000))
    return bets


def _index(bets: list[OpenBet], ticks: list[tuple[int, int]]) -> ResolverIndex:
    index = ResolverIndex("BTC-USD", COLUMN_MS, ROW_HEIGHT, MAX_GAP_MS, ticks[0][0] - 1)
    for bet in bets:
        index.add(bet)
    return index


def _seconds(index: ResolverIndex, ticks: list[tuple[int, int]]) -> tuple[float, int]:
    on_tick = index.on_tick
    resolved = 0
    started = time.perf_counter()
    for ts, price in ticks:
        resolved += len(on_tick(ts, price))
    return time.perf_counter() - started, resolved


def _bytecodes(index: ResolverIndex, ticks: list[tuple[int, int]]) -> int:
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        for ts, price in ticks:
            index.on_tick(ts, price)
    finally:
        sys.settrace(None)
    return count


def run(
    *,
    quick: bool = False,
    few: int = 1_000,
    many: int = 100_000,
    ticks: int = 20_000,
    tick_ms: int = 50,
    rounds: int = 5,
    sample: int = 2_000,
    seed: int = 1,
) -> dict[str, Any]:
    """Measure both populations `rounds` times, alternating; `quick` shortens the stream."""
    if quick:
        ticks, rounds = ticks // 4, 3
    stream = _ticks(ticks, tick_ms, seed)
    foreground = _foreground(stream, seed)
    populations = {"few": few, "many": many}
    background = {name: _background(n, stream) for name, n in populations.items()}
    best: dict[str, float] = {}
    spread: dict[str, list[float]] = {name: [] for name in populations}
    resolved: dict[str, int] = {}
    for _ in range(rounds):
        for name in populations:
            index = _index(foreground + background[name], stream)
            seconds, resolved[name] = _seconds(index, stream)
            assert index.open_bets >= populations[name], "a background bet was decided"
            spread[name].append(seconds)
            best[name] = min(best.get(name, seconds), seconds)
    work = {
        name: _bytecodes(_index(foreground + background[name], stream), stream[:sample])
        for name in populations
    }
    per_tick_ns = {name: best[name] / ticks * 1e9 for name in populations}
    return {
        "ticks": ticks,
        "tick_ms": tick_ms,
        "columns_crossed": stream[-1][0] // COLUMN_MS - stream[0][0] // COLUMN_MS,
        "foreground_bets": len(foreground),
        "resolved_per_run": resolved,
        "background_bets": populations,
        "rounds": rounds,
        "ns_per_tick": {name: round(v) for name, v in per_tick_ns.items()},
        "ratio": round(per_tick_ns["many"] / per_tick_ns["few"], 3),
        "goal_ratio_at_most": 2.0,
        "bytecodes_per_tick": {name: round(work[name] / sample, 2) for name in populations},
        "bytecode_ratio": round(work["many"] / work["few"], 4),
        "rounds_ms": {name: [round(s * 1e3, 2) for s in v] for name, v in spread.items()},
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
