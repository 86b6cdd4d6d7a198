"""`python -m loadgen` — the command line of the load generator and the same-run benchmarks.

    python -m loadgen run smoke --url http://127.0.0.1:8080 --out report.json
    python -m loadgen run steady-3k --serve tap          # start tap on loopback, then run
    python -m loadgen bench --quick --out report.json    # capacity of tap vs its baselines
    python -m loadgen bench naive | fanout | batcher | resolver | redis | betpath | client
    python -m loadgen bench scale --quick                # one process vs core + 1, 2 edges
    python -m loadgen killloop --kills 50 --seed S       # SIGKILL campaign (benches/killloop.py)

Exit status: 0 when every threshold held, 1 when one broke (or a bench target failed), 2 when
the run could not be set up (bad scenario, server not reachable, login refused). `killloop`
exits 1 on any violation and prints its JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from loadgen.generator.report import ProgressLine, format_report, write_json
from loadgen.generator.scenario import ScenarioError, load_scenario
from loadgen.generator.vu import SetupError
from loadgen.peers.targets import (
    RunningServer,
    ServerFailed,
    start_naive_server,
    start_tap_server,
    tap_unavailable,
)

BENCHES = ("all", "naive", "fanout", "batcher", "resolver", "redis", "betpath", "client", "scale")


def data_dir_for(arg: str | None) -> Path:
    if arg:
        path = Path(arg)
        path.mkdir(parents=True, exist_ok=True)
        return path
    # On the project's disk, not /tmp: fsync costs must be the real ones. /data is git-ignored.
    root = Path("data") / "loadgen"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=root))


@asynccontextmanager
async def maybe_serve(
    kind: str | None, data_dir: Path, tap_config: str | None
) -> AsyncIterator[RunningServer | None]:
    if kind is None:
        yield None
    elif kind == "naive":
        async with start_naive_server(data_dir) as server:
            yield server
    else:
        reason = tap_unavailable()
        if reason is not None:
            raise ServerFailed(reason)
        # Mock deposits fund the users; a 1 s breaker hysteresis instead of 30 s gets tap ready
        # (its breaker starts open) without half a minute of waiting on /readyz.
        overrides: dict[str, Any] = {
            "payments": {"mock_deposits": True},
            "breaker": {"hysteresis_ms": 1000},
        }
        async with start_tap_server(None, overrides, data_dir, config_path=tap_config) as server:
            yield server


async def cmd_run(args: argparse.Namespace) -> int:
    from loadgen.generator.runner import run_scenario

    scenario = load_scenario(args.scenario)
    if args.vus is not None:
        scenario.client.vus = args.vus
        scenario.client.market_data_vus = min(scenario.client.market_data_vus, args.vus)
    progress = None if args.quiet else ProgressLine()
    data_dir = data_dir_for(args.data_dir) if args.serve else Path(".")
    async with maybe_serve(args.serve, data_dir, args.tap_config) as server:
        base_url = server.base_url if server is not None else args.url
        report = await run_scenario(scenario, base_url=base_url, progress=progress, server=server)
    print(format_report(report))
    if args.out:
        write_json(report, Path(args.out))
    return 0 if report["passed"] else 1


async def cmd_bench(args: argparse.Namespace) -> int:
    from loadgen.benches import bench

    data_dir = data_dir_for(args.data_dir)
    report = await bench.run(
        args.which,
        quick=args.quick,
        data_dir=data_dir,
        vus=args.vus,
        clients=args.clients,
        fanout_target=args.target,
        tap_config=args.tap_config,
        runs=args.runs,
    )
    print(bench.format_bench(report))
    if args.out:
        write_json(report, Path(args.out))
    return 0 if report.get("ok", True) else 1


async def cmd_killloop(args: argparse.Namespace) -> int:
    from loadgen.benches import killloop

    opts = killloop.Options(
        kills=args.kills,
        seed=args.seed,
        players=args.players,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        early_kill_share=args.early_kill_share,
        tap_check_each=not args.tap_check_at_end,
        redis_url=args.redis_url,
        progress=None if args.quiet else lambda text: print(text, file=sys.stderr, flush=True),
    )
    summary, _ = await killloop.campaign(opts)
    print(json.dumps(summary, indent=2))
    if args.out:
        write_json(summary, Path(args.out))
    return 0 if summary["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadgen",
        description="Open-loop load generator and same-run benchmarks for tap.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a scenario (loadgen/scenarios/NAME.toml or a path)")
    run.add_argument("scenario", help="a name in loadgen/scenarios/ (smoke, steady-3k…) or a file")
    run.add_argument("--url", help="base URL of a running server (default: the scenario's)")
    run.add_argument(
        "--serve", choices=("tap", "naive"), help="start this server on loopback and run against it"
    )
    run.add_argument("--tap-config", help="TOML overlay for tap when --serve tap")
    run.add_argument("--vus", type=int, help="override client.vus")
    run.add_argument("--out", help="write the JSON report here")
    run.add_argument("--data-dir", help="where started servers keep data and logs")
    run.add_argument("--quiet", action="store_true", help="no live progress line")

    bench = sub.add_parser("bench", help="same-run benchmarks against servers started here")
    bench.add_argument("which", nargs="?", default="all", choices=BENCHES)
    bench.add_argument(
        "--quick", action="store_true", help="short probes: one run of `all` ≤ 5 min"
    )
    bench.add_argument(
        "--runs",
        type=int,
        default=1,
        help="`all`: this many complete runs back to back, and the spread across them",
    )
    bench.add_argument("--out", help="write the JSON report here")
    bench.add_argument("--vus", type=int, help="virtual users for the bet benches")
    bench.add_argument("--clients", type=int, help="WebSocket clients for `bench fanout`")
    bench.add_argument(
        "--target", choices=("tap", "naive"), default="tap", help="server for `bench fanout`"
    )
    bench.add_argument("--tap-config", help="TOML overlay for the tap server the bench starts")
    bench.add_argument("--data-dir", help="where started servers keep data and logs")

    kl = sub.add_parser(
        "killloop", help="SIGKILL a real tap at random moments under mixed load, then audit"
    )
    kl.add_argument("--kills", type=int, default=50, help="SIGKILLs before the final check")
    kl.add_argument("--seed", default="killloop", help="seeds kill moments and the load mix")
    kl.add_argument("--players", type=int, default=4)
    kl.add_argument("--early-kill-share", type=float, default=0.1, help="kills during start-up")
    kl.add_argument("--tap-check-at-end", action="store_true", help="not after every kill")
    kl.add_argument("--redis-url", help="hot state in this Redis (own key prefix, removed after)")
    kl.add_argument("--data-dir", help="database and server log (default data/killloop/…)")
    kl.add_argument("--out", help="write the JSON summary here too")
    kl.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


SETUP_ERRORS = (ScenarioError, SetupError, ServerFailed, ValueError)


def setup_error_in(exc: BaseException) -> BaseException | None:
    """The setup error inside `exc` (nurseries wrap errors in exception groups), if any."""
    if isinstance(exc, SETUP_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = setup_error_in(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"run": cmd_run, "bench": cmd_bench, "killloop": cmd_killloop}[args.command]
    try:
        return trio.run(command, args)
    except KeyboardInterrupt:
        return 130
    except BaseException as e:
        found = setup_error_in(e)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
