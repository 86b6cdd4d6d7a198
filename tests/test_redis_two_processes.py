"""Two processes, one Redis: the admission scripts are the only thing that keeps two edges from
admitting the same nonce twice or spending the same money twice.

Each worker is this module run as a program (`python -m tests.test_redis_two_processes worker
…`): it starts a `RedisHotState` on the shared prefix, says "ready", waits for "go" on stdin and
fires its admissions concurrently (its gateway pipelines them), then prints how many were
admitted. The parent releases both workers together so their pipelines interleave on the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from actors.redis_gateway import open_redis_hot_state
from tests.redis_fixtures import hot_config, redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
A = "0x00000000000000000000000000000000000000aa"
T0 = 1_732_290_000_000
STAKE = 1_000
PER_WORKER = 50  # 100 admissions over both processes
LANES = 5  # concurrent admissions per process at any moment
WORKERS_WITHIN_S = 60  # bounds two interpreter start-ups on a busy machine; not a measurement


async def worker(url: str, prefix: str, mode: str, tag: str) -> None:
    cfg = hot_config(url, prefix, rate_per_s=1_000.0, burst=1_000)  # only nonce and money decide
    async with open_redis_hot_state(cfg) as hot:
        assert await hot.ping()
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        admitted = 0

        async def lane(lane_no: int) -> None:
            # "same-nonce": one nonce everywhere, a distinct cell each (only the nonce decides);
            # "stakes": distinct nonces and cells (only the money decides). A lane's bets go one
            # after another, so each process sends many small pipelines that interleave with
            # the other's on the server.
            nonlocal admitted
            for j in range(PER_WORKER // LANES):
                i = lane_no * (PER_WORKER // LANES) + j
                n = "shared-nonce-000001" if mode == "same-nonce" else f"{tag}-nonce-{i:010d}"
                result = await hot.admit_bet(A, n, f"BTC-USD:{tag}{i}:1", STAKE, T0)
                admitted += result.ok

        async with trio.open_nursery() as nursery:
            for lane_no in range(LANES):
                nursery.start_soon(lane, lane_no)
        print(json.dumps({"admitted": admitted}), flush=True)


async def read_line(process: trio.Process) -> str:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        if not chunk:
            raise RuntimeError(f"worker exited early after {line!r}")
        line += chunk
    return line.decode().strip()


async def run_two_workers(url: str, prefix: str, mode: str) -> list[int]:
    processes = [
        await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.test_redis_two_processes", url, prefix, mode, tag],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for tag in ("w1", "w2")
    ]
    try:
        with trio.fail_after(WORKERS_WITHIN_S):
            for p in processes:
                assert await read_line(p) == "ready"
            for p in processes:
                assert p.stdin is not None
                await p.stdin.send_all(b"go\n")
            counts = [json.loads(await read_line(p))["admitted"] for p in processes]
            for p in processes:
                assert await p.wait() == 0
        return counts
    finally:
        for p in processes:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def fund(url: str, prefix: str, amount: int) -> None:
    async with open_redis_hot_state(hot_config(url, prefix)) as hot:
        await hot.credit(A, amount)


async def test_one_nonce_is_admitted_once_across_two_processes(
    redis_url: str, redis_prefix: str
) -> None:
    await fund(redis_url, redis_prefix, 1_000 * STAKE)
    counts = await run_two_workers(redis_url, redis_prefix, "same-nonce")
    assert sum(counts) == 1


async def test_money_for_k_stakes_admits_at_most_k_across_two_processes(
    redis_url: str, redis_prefix: str
) -> None:
    k = 37
    await fund(redis_url, redis_prefix, k * STAKE + STAKE - 1)  # just short of k + 1
    counts = await run_two_workers(redis_url, redis_prefix, "stakes")
    assert sum(counts) == k
    async with open_redis_hot_state(hot_config(redis_url, redis_prefix)) as hot:
        assert await hot.spendable(A) == STAKE - 1


if __name__ == "__main__":
    trio.run(worker, *sys.argv[1:5])
