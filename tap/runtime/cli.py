"""`tap` — the command line: serve, feed-sim, migrate, backup, restore, archive, check, replay,
audit.

Each command loads the same configuration (embedded defaults ← `--config FILE` ← `TAP__…`
environment) and exits non-zero when something is wrong, so it can gate scripts and cron jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import msgspec

from tap.config import Config, ConfigError, load_config
from tap.runtime import logs

log = logging.getLogger("tap.cli")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    """`tap serve`: check the session secret before anything starts (a bad one is a
    configuration error, exit 2), then run one role (`--role all|core|edge`) or, with
    `--edges N`, the fleet supervisor; print where it serves and what makes it unfit for real
    money."""
    import trio

    from tap.runtime.procs import watch_parent
    from tap.runtime.session_secret import load_session_secret
    from tap.runtime.supervisor import run_server

    cfg = _config(args)
    # A missing or short session secret stops here, as a configuration error, before anything
    # starts (the edge would only find it once the writer and the feed were running).
    load_session_secret(cfg.server.db_path)
    if args.port is not None:
        cfg = _with_port(cfg, args.port)
    if args.edges is not None:
        return serve_fleet(args, cfg)
    if args.core_port is not None:
        return _usage_error("--core-port goes with --edges (the core of a fleet)")
    options: dict[str, Any] = {"role": args.role, "reuse_port": args.reuse_port}

    async def serve_and_announce() -> None:
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[Any]) -> None:
                await run_server(cfg, task_status=task_status, **options)
                nursery.cancel_scope.cancel()  # the parent watch, if any, ends with the server

            running = await nursery.start(serve)
            if args.ready_file:
                _write_ready_file(Path(args.ready_file), running.url)
            if args.supervisor_pid is not None:
                # A fleet's child: its supervisor announces the fleet, and its death stops us.
                nursery.start_soon(watch_parent, args.supervisor_pid, running.stop)
                return
            print(f"tap is serving on {running.url}  (Ctrl-C drains and stops)", flush=True)
            print(f"  try: curl -s {running.url}/api/grid/{cfg.markets[0].symbol} | head -c 300")
            print(f"  docs: {running.url}/openapi.json, docs/API.md, docs/websocket.md", flush=True)
            for warning in play_money_warnings(cfg):
                print(f"  WARNING: {warning}", flush=True)
                log.warning("%s", warning)

    try:
        trio.run(serve_and_announce)
    finally:
        if args.ready_file:
            Path(args.ready_file).unlink(missing_ok=True)
    return 0


def serve_fleet(args: argparse.Namespace, cfg: Config) -> int:
    """`tap serve --edges N`: one core and N edges on one port, supervised (tap/runtime/procs.py).

    The children meet on Redis (the bet stream, sessions, the hot state), so there is no fleet
    without `redis.url`. A port of 0 is resolved here, once: every edge must bind the same one.
    """
    import tempfile

    import trio

    from tap.runtime import procs

    if args.role != "all":
        return _usage_error("--edges starts its own core and edges; it takes no --role")
    if args.edges < 1:
        return _usage_error("--edges N needs N >= 1")
    if not cfg.redis.url:
        return _usage_error(
            "--edges needs redis.url (in the config file or TAP__REDIS__URL): "
            "the core and its edges meet on Redis"
        )
    host = cfg.server.host
    port = cfg.server.port or _free_port(host)
    core_port = args.core_port if args.core_port is not None else port + 1
    core_port = core_port or _free_port(host)
    if core_port == port:
        return _usage_error(f"--core-port {core_port} is the public port")
    scheme = "https" if cfg.server.tls_cert else "http"
    policy = procs.Policy(stop_within_s=2 * cfg.server.graceful_timeout_s + 10)

    class Announce:
        def started(self, value: procs.Fleet | None = None) -> None:
            url = f"{scheme}://{host}:{port}"
            print(
                f"tap is serving on {url}  (1 core + {args.edges} edges; core ops on "
                f"{scheme}://{host}:{core_port}; Ctrl-C drains and stops)",
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="tap-fleet-") as run_dir:
        specs = procs.fleet(
            procs.tap_command(getattr(args, "config", None)),
            edges=args.edges,
            host=host,
            port=port,
            core_port=core_port,
            tls=bool(cfg.server.tls_cert),
            run_dir=Path(run_dir),
            supervisor_pid=os.getpid(),
        )
        try:
            code: int = trio.run(partial(procs.supervise, specs, policy, task_status=Announce()))
        except procs.FleetFailed as e:
            print(f"tap serve --edges: {e}", file=sys.stderr)
            return 1
    return code


def _usage_error(message: str) -> int:
    print(f"tap serve: {message}", file=sys.stderr)
    return 2


def _with_port(cfg: Config, port: int) -> Config:
    return msgspec.structs.replace(cfg, server=msgspec.structs.replace(cfg.server, port=port))


def _free_port(host: str) -> int:
    """A port nobody listens on now (the kernel's pick), for a fleet told port 0."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _write_ready_file(path: Path, url: str) -> None:
    """Whole or absent: a supervisor polling for the file never reads half of it."""
    partial_path = path.with_name(path.name + ".tmp")
    partial_path.write_text(url + "\n")
    os.replace(partial_path, path)


def play_money_warnings(cfg: Config) -> list[str]:
    """What makes this server unfit for real money, said at startup so that it is never silent
    (configs/prod.example.toml is the real-deployment overlay)."""
    warnings = []
    if cfg.feed.source in ("sim", "ws-sim", "manual"):
        warnings.append(
            f'feed.source = "{cfg.feed.source}": prices are SIMULATED, not a market '
            "(see configs/prod.example.toml)"
        )
    if cfg.payments.mock_deposits:
        warnings.append("payments.mock_deposits = true: anyone can credit themselves money")
    return warnings


def cmd_feed_sim(args: argparse.Namespace) -> int:
    import trio

    from actors.feed_sim import serve_feed_sim

    cfg = _config(args)
    f = cfg.feed
    print(f"feed-sim: ws://{args.host}:{args.port}/ (seed {f.sim_seed}, σ {f.sim_sigma})")
    trio.run(
        lambda: serve_feed_sim(
            args.host, args.port, f.sim_seed, f.sim_sigma, f.sim_tick_ms, f.sim_start_price
        )
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from tap.store import connect

    cfg = _config(args)
    Path(cfg.server.db_path).parent.mkdir(parents=True, exist_ok=True)
    version = connect.migrate_path(cfg.server.db_path)
    print(f"{cfg.server.db_path}: schema version {version}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from tap.store import backup

    cfg = _config(args)
    try:
        path = backup.backup_now(cfg, args.to)
    except (backup.BackupError, backup.LockHeld) as e:
        print(f"backup failed: {e}", file=sys.stderr)
        return 1
    print(f"backup written: {path}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from tap.store import backup

    cfg = _config(args)
    try:
        backup.restore(cfg, args.path)
    except backup.RestoreError as e:
        print(f"restore refused: {e}", file=sys.stderr)
        return 1
    print(f"restored {args.path} into {cfg.server.db_path}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from tap.store import archive

    cfg = _config(args)
    try:
        report = archive.run_archive(cfg, now_ms=None)
    except archive.ArchiveError as e:  # nothing was deleted; a re-run is safe
        print(f"archive failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from tap.store import connect
    from tap.store.integrity import integrity_check

    cfg = _config(args)
    conn = connect.open_connection(cfg.server.db_path, read_only=True)
    try:
        violations = integrity_check(conn)
    finally:
        conn.close()
    for v in violations:
        print(v)
    print(f"integrity: {'OK' if not violations else f'{len(violations)} violation(s)'}")
    return 1 if violations else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tap.store.replay import replay_range

    cfg = _config(args)
    try:
        mismatches, checked = replay_range(cfg, args.from_ms, args.to_ms)
    except (FileNotFoundError, ValueError) as e:
        print(f"replay: {e}", file=sys.stderr)
        return 2
    for m in mismatches:
        print(m)
    print(f"replay: {checked} bet(s) re-resolved, {len(mismatches)} mismatch(es)")
    return 1 if mismatches else 0


def tap_version() -> str:
    """The installed distribution's version (pyproject.toml); "unknown" from a bare source tree."""
    try:
        return version("tap")
    except PackageNotFoundError:
        return "unknown"


def cmd_audit(args: argparse.Namespace) -> int:
    """`tap audit rtp`: simulate bets on the priced grid against the discrete-tick win rule
    (fixed seed, so anyone can rerun it) and print the realized return with its confidence
    interval next to the promised `1 − edge` (docs/pricing.md); `--json` for machines."""
    import time

    from tap.audit import format_report, run_rtp_audit

    cfg = _config(args)
    bets = args.bets if args.bets is not None else (QUICK_AUDIT_BETS if args.quick else 1_000_000)
    started = time.perf_counter()
    report = run_rtp_audit(cfg, bets=bets, seed=args.seed)
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps(report.as_dict() | {"elapsed_s": round(elapsed, 1)}, indent=2))
    else:
        print(format_report(report))
        print(f"\n({elapsed:.0f} s)")
    return 0


# `tap audit rtp --quick`: enough bets for a ±0.03 interval in well under 30 s.
QUICK_AUDIT_BETS = 60_000


def build_parser() -> argparse.ArgumentParser:
    """Every `tap` subcommand and its options, in one place (`tap --help` is generated from
    it); each subcommand's handler is its `cmd_*` function."""
    parser = argparse.ArgumentParser(
        prog="tap",
        description="tap: the server behind a tap-trading game (see README.md).",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML overlay on the embedded defaults, tap/configs/default.toml (TAP__… env wins)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tap_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="config overlay")
        return p

    p = add("serve", "Run the server: actors + HTTP/WS edge (SIGTERM/SIGINT drain and stop).")
    p.add_argument(
        "--role",
        choices=["all", "core", "edge"],
        default="all",
        help="all: the one-process server (default); core: ingest, market, resolver, the writer; "
        "edge: HTTP/WS on Redis (core and edge need redis.url)",
    )
    p.add_argument("--port", type=int, help="listen on this port (default: server.port)")
    p.add_argument(
        "--edges",
        type=int,
        metavar="N",
        help="start one core and N edges on the one port (SO_REUSEPORT) and supervise them",
    )
    p.add_argument(
        "--core-port",
        type=int,
        metavar="C",
        help="with --edges: the core's ops endpoints (/readyz, /metrics) (default: port + 1)",
    )
    # Set by the fleet supervisor for its children (tap/runtime/procs.py), not by hand.
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--supervisor-pid", type=int, metavar="PID", help=argparse.SUPPRESS)
    p = add("feed-sim", "Serve the simulated GBM price feed as a standalone WebSocket server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    add("migrate", "Create or upgrade the SQLite schema (idempotent).")
    p = add("backup", "Online backup of the ledger database (SQLite backup API).")
    p.add_argument("--to", metavar="PATH", help="file to write (default: archive.backup_dir)")
    p = add("restore", "Restore a backup into place; only while the server is stopped.")
    p.add_argument("path", help="backup file to restore (its integrity is verified first)")
    add("archive", "Archive resolved bets and old ledger rows; purge ticks past retention.")
    add("check", "Integrity check of the ledger; exits 1 on any violation.")
    p = add("replay", "Re-resolve bets from stored ticks; exits 1 on any mismatch.")
    p.add_argument("--from", dest="from_ms", type=int, required=True, help="window start, ms")
    p.add_argument("--to", dest="to_ms", type=int, required=True, help="window end, ms")
    p = add("audit", "Audits of the house's promises (`rtp`: realized return to player).")
    p.add_argument("what", choices=["rtp"], help="rtp: Monte Carlo of the fairness promise")
    p.add_argument("--bets", type=int, help="bets to place (default 1,000,000; --quick 60,000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated path (default 1)")
    p.add_argument("--quick", action="store_true", help="a small run (the make-test size)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


COMMANDS = {
    "serve": cmd_serve,
    "feed-sim": cmd_feed_sim,
    "migrate": cmd_migrate,
    "backup": cmd_backup,
    "restore": cmd_restore,
    "archive": cmd_archive,
    "check": cmd_check,
    "replay": cmd_replay,
    "audit": cmd_audit,
}


def log_level(args: argparse.Namespace) -> int:
    """The root logger's level: `server.log_level` for `serve` (a server's logs are its
    operator's choice); INFO for every other command, whose few lines are its report."""
    if args.command != "serve":
        return logging.INFO
    level: int = logging.getLevelNamesMapping()[_config(args).server.log_level.upper()]
    return level


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs.configure(log_level(args), as_json=args.command == "serve")
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
