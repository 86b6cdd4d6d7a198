"""`tap` — the command line: serve, feed-sim, migrate, backup, restore, archive, check, replay,
audit.

Each command loads the same configuration (embedded defaults ← `--config FILE` ← `TAP__…`
environment) and exits non-zero when something is wrong, so it can gate scripts and cron jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tap.config import Config, ConfigError, load_config
from tap.runtime import logs

log = logging.getLogger("tap.cli")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from tap.runtime.supervisor import run_server

    cfg = _config(args)

    async def serve_and_announce() -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(run_server, cfg)
            print(f"tap is serving on {running.url}  (Ctrl-C drains and stops)", flush=True)
            print(f"  try: curl -s {running.url}/api/grid/{cfg.markets[0].symbol} | head -c 300")
            print(f"  docs: {running.url}/openapi.json, docs/API.md, docs/websocket.md", flush=True)
            for warning in play_money_warnings(cfg):
                print(f"  WARNING: {warning}", flush=True)
                log.warning("%s", warning)

    trio.run(serve_and_announce)
    return 0


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
    from tap.store import db

    cfg = _config(args)
    Path(cfg.server.db_path).parent.mkdir(parents=True, exist_ok=True)
    version = db.migrate_path(cfg.server.db_path)
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
    from tap.store import db
    from tap.store.integrity import integrity_check

    cfg = _config(args)
    conn = db.open_connection(cfg.server.db_path, read_only=True)
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

    add("serve", "Run the server: actors + HTTP/WS edge (SIGTERM/SIGINT drain and stop).")
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
