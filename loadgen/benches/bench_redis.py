"""Admissions per second through `RedisHotState` against `InMemoryHotState`, in the same run.

Both sides admit the same bets (distinct nonces and cells over `accounts` funded addresses, rate
limit out of the way) from `tasks` concurrent trio tasks, so the ratio says what a shared hot
state costs an edge: a worker-thread hop and a network round trip, shared by every admission
waiting at that moment. `round_trips_per_bet` (REDIS_ROUND_TRIPS / admitted) shows the sharing:
well below 1 when pipelining works. A one-task run of the Redis side (`sequential_*`) is the
unshared reference: one round trip per admission. Keys live under a fresh prefix, deleted after.

    python -m loadgen.benches.bench_redis --url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import redis
import trio
from prometheus_client import REGISTRY

from actors.redis_gateway import open_redis_hot_state
from tap.config import Config, LimitsConfig, RedisConfig
from tap.hotstate import HotState, InMemoryHotState

STAKE = 1_000
T0 = 1_732_290_000_000
RATE = 1_000_000.0  # tokens per second: the bench measures admission, not the limiter
BURST = 1_000_000


def _round_trips() -> float:
    return REGISTRY.get_sample_value("tap_redis_round_trips_total") or 0.0


async def _fund(hot: HotState, bets: int, accounts: int) -> None:
    async with trio.open_nursery() as nursery:
        for a in range(accounts):
            nursery.start_soon(hot.credit, f"0x{a:040x}", STAKE * (bets // accounts + 1))


async def _admit_all(hot: HotState, bets: int, tasks: int, accounts: int) -> tuple[float, int]:
    """Admit `bets` bets from `tasks` concurrent tasks; (seconds, admitted)."""
    admitted = 0
    next_bet = iter(range(bets))

    async def lane() -> None:
        nonlocal admitted
        for i in next_bet:
            address = f"0x{i % accounts:040x}"
            answer = await hot.admit_bet(address, f"bench-{i:012d}", f"BTC-USD:{i}:0", STAKE, T0)
            admitted += answer.ok

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(lane)
    return time.perf_counter() - start, admitted


async def _bench(url: str, bets: int, tasks: int, accounts: int) -> dict[str, Any]:
    memory = InMemoryHotState(30_000, RATE, BURST)
    await _fund(memory, bets, accounts)
    memory_s, memory_ok = await _admit_all(memory, bets, tasks, accounts)
    out: dict[str, Any] = {"memory_seconds": memory_s, "memory_admitted": memory_ok}
    for name, n_bets, n_tasks in (("redis", bets, tasks), ("sequential", max(1, bets // 10), 1)):
        prefix = f"tapbench-{uuid.uuid4().hex[:12]}"
        cfg = Config(
            redis=RedisConfig(url=url, prefix=prefix),
            limits=LimitsConfig(rate_per_s=RATE, burst=BURST),
        )
        try:
            async with open_redis_hot_state(cfg) as hot:
                await _fund(hot, n_bets, accounts)
                before = _round_trips()
                seconds, ok = await _admit_all(hot, n_bets, n_tasks, accounts)
                trips = _round_trips() - before  # the admissions' (and any heartbeat's) only
        finally:
            await trio.to_thread.run_sync(_delete_prefix, url, prefix)
        out[f"{name}_seconds"] = seconds
        out[f"{name}_admitted"] = ok
        out[f"{name}_round_trips"] = trips
        out[f"{name}_bets"] = n_bets
    return out


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def run(
    *,
    url: str = "redis://127.0.0.1:6379/0",
    bets: int = 20_000,
    tasks: int = 64,
    accounts: int = 1_000,
) -> dict[str, Any]:
    """Measure both hot states on one workload; a flat dict of figures. `ratio` = Redis rate /
    in-memory rate; round trips are counted over the admission phase only (not the funding)."""
    raw = trio.run(_bench, url, bets, tasks, accounts)
    memory_rate = raw["memory_admitted"] / raw["memory_seconds"]
    redis_rate = raw["redis_admitted"] / raw["redis_seconds"]
    sequential_rate = raw["sequential_admitted"] / raw["sequential_seconds"]
    return {
        "bets": bets,
        "tasks": tasks,
        "accounts": accounts,
        "memory_admitted": raw["memory_admitted"],
        "redis_admitted": raw["redis_admitted"],
        "memory_per_s": round(memory_rate),
        "redis_per_s": round(redis_rate),
        "ratio": round(redis_rate / memory_rate, 4),
        "redis_round_trips": int(raw["redis_round_trips"]),
        "round_trips_per_bet": round(raw["redis_round_trips"] / max(1, raw["redis_admitted"]), 4),
        "sequential_bets": raw["sequential_bets"],
        "sequential_per_s": round(sequential_rate),
        "sequential_round_trips_per_bet": round(
            raw["sequential_round_trips"] / max(1, raw["sequential_admitted"]), 4
        ),
        "pipelining_speedup": round(redis_rate / sequential_rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--bets", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--accounts", type=int, default=1_000)
    args = parser.parse_args()
    print(json.dumps(run(url=args.url, bets=args.bets, tasks=args.tasks, accounts=args.accounts)))


if __name__ == "__main__":
    main()
