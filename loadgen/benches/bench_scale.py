"""`python -m loadgen bench scale`: tap as one process, then one core + 1 edge, then one core + 2
edges (`tap serve --edges N`), in the same run, on the same Redis, with the same crowd protocol.

It decides the scale-out protocol. For each topology it starts a fresh database and the server,
logs in the same number of virtual users (same seed), and then:
- holds `Plan.cpu_rate` bets/s (the same load for every topology) for a steady window and reads,
  around it, the CPU seconds of every server process (`/proc/<pid>/stat`; a fleet's children are
  found under its supervisor) per accepted bet, and Redis commands per accepted bet (`INFO
  commandstats` deltas, INFO itself left out) on a throwaway `redis-server` of the bench's own,
  so that nobody else's traffic is counted;
- searches the highest sustained HTTP bet rate with the bench's capacity search
  (`loadgen.benches.bench.Prober`: p99 ≤ 100 ms, no 5xx, confirmations keep up, the top rate
  repeated).
The scaling ratios are each fleet's capacity over the one process's. Bets resolve when their
columns close, mostly after the window: CPU per bet is the bet path's (admission, hand-off,
commit, answers), not the resolver's.

All of this runs on one machine, shared with the generator and its signer: on 2 cores a fleet
competes with its own load, so the per-process CPU per bet is the figure to project from
(docs/benchmarks.md, "Scale-out"), not the capacity.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis
import trio

from loadgen.benches.bench import (
    FULL,
    QUICK,
    TAP_BENCH_OVERRIDES,
    TAP_CLIENT_KEEP_ALIVE_S,
    BetWorkload,
    Plan,
    Prober,
    bench_spec,
)
from loadgen.generator.cpu import cpu_seconds, process_tree
from loadgen.generator.recorder import Recorder
from loadgen.generator.runner import Monitor
from loadgen.generator.signer import Signer
from loadgen.generator.vu import Crowd, Target
from loadgen.peers.targets import (
    TAP_CLI,
    RunningServer,
    _python,
    _run_to_completion,
    free_port,
    serve_process,
    tap_environment,
)

TOPOLOGIES = ((0, "one process (--role all)"), (1, "core + 1 edge"), (2, "core + 2 edges"))
QUICK_VUS = 300  # enough users to keep ~1000 bets/s in flight; their logins take seconds
STEADY_S = {True: 5.0, False: 15.0}


class FleetServer(RunningServer):
    """A running `tap serve` (one process, or a fleet's supervisor). Its CPU meter (the bench's
    server CPU) is its whole process tree's; `processes` names each server process."""

    def processes(self) -> dict[str, int]:
        """name → pid: "tap" for one process; "core", "edge-1", … for a fleet's children."""
        named: dict[str, int] = {}
        edges = 0
        for pid in sorted(process_tree(self.pid)[1:]):
            argv = _cmdline(pid)
            if "--role" not in argv:
                continue
            role = argv[argv.index("--role") + 1]
            if role == "edge":
                edges += 1
                named[f"edge-{edges}"] = pid
            else:
                named[role] = pid
        return named or {"tap": self.pid}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


# ── a throwaway Redis ───────────────────────────────────────────────────────────────────────


@asynccontextmanager
async def throwaway_redis(directory: Path) -> AsyncIterator[tuple[str, int]]:
    """A `redis-server` on a free port, keeping nothing on disk; its URL and pid."""
    port = free_port()
    log = (directory / "redis.log").open("ab")
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(directory)]
    process = await trio.lowlevel.open_process(argv, stdout=log, stderr=log)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with trio.fail_after(10):
            while not await trio.to_thread.run_sync(_pings, url):  # noqa: ASYNC110
                await trio.sleep(0.05)
        yield url, process.pid
    finally:
        log.close()
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


def _pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_commands(url: str) -> dict[str, int]:
    """Calls per command since the server started (`INFO commandstats`), INFO itself left out."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name != "cmdstat_info"
    }


# ── the servers ─────────────────────────────────────────────────────────────────────────────


@asynccontextmanager
async def start_topology(edges: int, data_dir: Path, redis_url: str) -> AsyncIterator[FleetServer]:
    """`tap serve` (edges == 0) or `tap serve --edges N` on a fresh database, ready for bets."""
    shutil.rmtree(data_dir, ignore_errors=True)
    os.makedirs(data_dir)
    port = free_port()
    overrides = {
        **TAP_BENCH_OVERRIDES,
        "redis": {"url": redis_url, "prefix": f"bench-{uuid.uuid4().hex[:8]}"},
    }
    env = {**os.environ, **tap_environment(port, data_dir, overrides)}
    log = data_dir / "tap.log"
    await _run_to_completion(_python(TAP_CLI, "migrate"), env, log)
    argv = _python(TAP_CLI, "serve")
    if edges:
        argv += ["--edges", str(edges), "--core-port", str(free_port())]
    async with serve_process(
        "tap",
        argv,
        port,
        log,
        env=env,
        ready_path="/healthz",
        ready_status="pass",
        stop_timeout=40.0,
    ) as server:
        yield FleetServer(server.name, server.host, server.port, server.process, server.log)


# ── the bench ───────────────────────────────────────────────────────────────────────────────


def _say(text: str) -> None:
    print(text, flush=True)


async def measure_topology(
    server: FleetServer,
    plan: Plan,
    vus: int,
    name: str,
    redis: tuple[str, int],
    steady_s: float,
) -> dict[str, Any]:
    """A steady window at `plan.cpu_rate` (equal load for every topology) with CPU and Redis per
    bet, then the capacity search of the bet path."""
    redis_url, redis_pid = redis
    pids = server.processes()
    out: dict[str, Any] = {"processes": sorted(pids)}
    pids["redis"] = redis_pid  # the shared one: its CPU per bet is part of the bill
    spec = bench_spec(plan, vus, "http", TAP_CLIENT_KEEP_ALIVE_S)
    crowd = Crowd(Target(server.base_url), spec, Recorder(), seed=11)
    async with Signer(vus, crowd.signer_seed) as signer, trio.open_nursery() as nursery:
        _say(f"{name}: logging in {vus} users")
        await crowd.setup(nursery, signer)
        nursery.start_soon(crowd.watch_grid)
        nursery.start_soon(crowd.presign, signer)
        prober = Prober(nursery, plan, Monitor(signer=signer, server=server), _say)
        http = BetWorkload(crowd, signer, "http")
        rate = plan.cpu_rate
        _say(f"{name}: {steady_s:.0f} s steady at {rate:.0f}/s, CPU and Redis per bet")
        cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
        redis_before = await trio.to_thread.run_sync(redis_commands, redis_url)
        accepted_before = crowd.tracker.accepted_count
        started = time.monotonic()
        probe = await prober.probe(http, rate, steady_s)
        wall = time.monotonic() - started
        accepted = crowd.tracker.accepted_count - accepted_before
        redis_after = await trio.to_thread.run_sync(redis_commands, redis_url)
        cpu_after = {n: cpu_seconds(p) for n, p in pids.items()}
        calls = {
            cmd: n - redis_before.get(cmd, 0)
            for cmd, n in redis_after.items()
            if n - redis_before.get(cmd, 0)
        }
        out["steady"] = {
            "rate": rate,
            "passed": probe["passed"],
            "p99_ms": probe.get("latency", {}).get("p99_ms"),
            "accepted": accepted,
            "wall_s": round(wall, 2),
            "cpu_ms_per_bet": {n: _per_bet(cpu_before[n], cpu_after[n], accepted) for n in pids},
            "cpu_pct": {n: _pct(cpu_before[n], cpu_after[n], wall) for n in pids},
            "redis_commands_per_bet": round(sum(calls.values()) / accepted, 2)
            if accepted
            else None,
            "redis_commands": dict(sorted(calls.items(), key=lambda kv: -kv[1])[:8]),
        }
        out["capacity"] = await prober.capacity(f"{name} HTTP bets", http)
        await crowd.drain(10.0)
        out["bets"] = crowd.tracker.summary()
        nursery.cancel_scope.cancel()
    crowd.close()
    return out


def _per_bet(before: float | None, after: float | None, bets: int) -> float | None:
    if before is None or after is None or not bets:
        return None
    return round((after - before) / bets * 1000, 3)


def _pct(before: float | None, after: float | None, wall: float) -> float | None:
    if before is None or after is None or wall <= 0:
        return None
    return round(100 * (after - before) / wall, 1)


async def run(quick: bool = True, directory: str | None = None) -> dict[str, Any]:
    """The three topologies in turn; the report, and its table printed."""
    plan = QUICK if quick else FULL
    vus = QUICK_VUS if quick else plan.vus
    root = Path(directory or "data/loadgen") / "scale"
    root.mkdir(parents=True, exist_ok=True)
    if shutil.which("redis-server") is None:
        return {"skipped": "redis-server is not installed"}
    report: dict[str, Any] = {"vus": vus, "cpus": len(os.sched_getaffinity(0)), "topologies": {}}
    async with throwaway_redis(root) as redis:
        for edges, name in TOPOLOGIES:
            async with start_topology(edges, root / f"edges-{edges}", redis[0]) as server:
                report["topologies"][name] = await measure_topology(
                    server, plan, vus, name, redis, STEADY_S[quick]
                )
    caps = {n: t["capacity"]["max_rate"] for n, t in report["topologies"].items()}
    one = caps.get(TOPOLOGIES[0][1]) or 0
    report["scaling_vs_one_process"] = {
        n: round(c / one, 2) if one else None for n, c in caps.items()
    }
    for line in format_scale(report):
        _say(line)
    return report


def format_scale(report: dict[str, Any]) -> list[str]:
    """The table: capacity (p99 ≤ 100 ms), its ratio to one process, and at the equal-load
    window the CPU per bet of each process (Redis included) and Redis commands per bet."""
    topologies = report["topologies"]
    rate = next(iter(topologies.values()), {}).get("steady", {}).get("rate", 0)
    lines = [
        f"scale-out ({report['vus']} users, {report['cpus']} CPUs shared with the generator)",
        f"{'topology':<26}{'bets/s':>7}{'p99 ms':>7}{'vs 1':>6}  "
        f"CPU ms/bet per process at {rate:.0f}/s; Redis commands/bet",
    ]
    for name, t in topologies.items():
        cap = t["capacity"]
        steady = t.get("steady", {})
        cpu = ", ".join(f"{n} {v}" for n, v in steady.get("cpu_ms_per_bet", {}).items())
        p99 = cap.get("p99_ms_at_max")
        ratio = report["scaling_vs_one_process"].get(name)
        lines.append(
            f"{name:<26}{cap['max_rate']:>7.0f}{'—' if p99 is None else f'{p99:.0f}':>7}"
            f"{'—' if ratio is None else f'{ratio:.2f}':>6}  {cpu or 'n/a'}; "
            f"{steady.get('redis_commands_per_bet', 'n/a')}"
        )
    return lines
