"""Servers the load generator starts itself, each in its own process on loopback.

This is the one seam between `loadgen` and the tap server: `start_tap_server` runs
`python -m tap.runtime.cli migrate` then `… serve` (the same commands as `tap migrate` /
`tap serve`) with `TAP__…` environment overrides — the port, a private data directory and
whatever the bench needs (`config_overrides`, a nested dict in the shape of `configs/*.toml`) —
and waits until `GET /healthz` says `pass` (bets are taken). Everything in `loadgen` that needs
tap goes through it; nothing imports tap's server code.

The baselines (`loadgen.peers.servers`: bare ASGI, minimal Quart-trio, WebSocket echo) and the naive
peer (`loadgen.peers.naive`) are started the same way, so every target in a bench pays the same
process, loopback and readiness costs.

Each server is an async context manager: on exit it gets SIGTERM (tap drains and commits), then
SIGKILL if it has not stopped within `stop_timeout`. Output goes to a log file whose tail is
quoted if the server dies or never gets ready.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from loadgen.generator.cpu import CpuMeter
from loadgen.generator.h1 import HttpConnection, HttpError

TAP_CLI = "tap.runtime.cli"


class ServerFailed(RuntimeError):
    """A server exited or never became ready; the message quotes its log."""


class RunningServer:
    def __init__(self, name: str, host: str, port: int, process: trio.Process, log: Path) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.process = process
        self.log = log

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_meter(self) -> CpuMeter:
        """The server's CPU, child processes included (a server may fork its workers)."""
        return CpuMeter(self.process.pid, tree=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _toml_literal(value: Any) -> str:
    """A value as a TOML literal, for `TAP__SECTION__KEY=<literal>` (tap parses it as TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for anything a config holds
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    raise TypeError(f"cannot express {value!r} as a TOML literal")


def tap_environment(
    port: int, data_dir: Path, config_overrides: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The `TAP__…` variables that point tap at `port` and `data_dir` and apply the overrides.

    `config_overrides` mirrors the TOML: `{"limits": {"rate_per_s": 1e5}}` becomes
    `TAP__LIMITS__RATE_PER_S=100000.0`; a list of tables is reached by index
    (`{"markets": [{"rows": 32}]}` → `TAP__MARKETS__0__ROWS=32`), as tap's loader reads it.
    """
    data = data_dir.resolve()
    env = {
        "TAP__SERVER__HOST": "127.0.0.1",
        "TAP__SERVER__PORT": str(port),
        "TAP__SERVER__DB_PATH": str(data / "tap.db"),
        "TAP__ARCHIVE__DIR": str(data / "archive"),
        "TAP__ARCHIVE__BACKUP_DIR": str(data / "backups"),
    }

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}__{str(key).upper()}", value)
        elif isinstance(node, list) and node and all(isinstance(v, Mapping) for v in node):
            for i, value in enumerate(node):
                walk(f"{prefix}__{i}", value)
        else:
            env[prefix] = _toml_literal(node)

    for section, values in (config_overrides or {}).items():
        walk(f"TAP__{section.upper()}", values)
    return env


def tap_unavailable() -> str | None:
    """Why tap cannot be started from here (None when it can): its CLI must import."""
    try:
        __import__(TAP_CLI)
    except Exception as e:
        return f"{TAP_CLI} does not import: {type(e).__name__}: {e}"
    return None


async def wait_ready(
    host: str,
    port: int,
    process: trio.Process,
    log: Path,
    *,
    path: str,
    within: float,
    want_status: str | None = None,
) -> None:
    """Poll `path` until it answers 200 (and, with `want_status`, a JSON body whose
    `status` is that: tap's `/healthz` says `pass` once bets can be taken, i.e. the breaker
    has closed; `/readyz` only says the process can serve)."""
    conn = HttpConnection(host, port)
    last = "no answer"
    try:
        with trio.move_on_after(within):
            while True:
                if process.returncode is not None:
                    raise ServerFailed(
                        f"exited with {process.returncode} before it was ready:\n{_tail(log)}"
                    )
                try:
                    with trio.fail_after(2.0):
                        resp = await conn.request("GET", path)
                    if resp.status == 200 and (
                        want_status is None or _json_status(resp.body) == want_status
                    ):
                        return
                    last = f"{resp.status} {resp.body[:200]!r}"
                except (OSError, HttpError, trio.TooSlowError, trio.BrokenResourceError) as e:
                    last = f"{type(e).__name__}: {e}"
                    conn.close()
                await trio.sleep(0.1)
    finally:
        conn.close()
    raise ServerFailed(f"not ready after {within:.0f} s (last: {last}):\n{_tail(log)}")


def _json_status(body: bytes) -> object:
    try:
        return json.loads(body).get("status")
    except (ValueError, AttributeError):
        return None


async def _run_to_completion(argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
    with log.open("ab") as out:
        result = await trio.run_process(
            list(argv), env=dict(env), stdout=out, stderr=out, check=False
        )
    if result.returncode != 0:
        raise ServerFailed(f"{' '.join(argv)} exited with {result.returncode}:\n{_tail(log)}")


@asynccontextmanager
async def serve_process(
    name: str,
    argv: Sequence[str],
    port: int,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/readyz",
    ready_status: str | None = None,
    ready_timeout: float = 60.0,
    stop_timeout: float = 15.0,
) -> AsyncIterator[RunningServer]:
    """Run `argv` (a server that will listen on 127.0.0.1:`port`) until the block ends."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        process = await trio.lowlevel.open_process(
            list(argv), env=full_env, stdout=out, stderr=out, stdin=None
        )
    try:
        await wait_ready(
            "127.0.0.1",
            port,
            process,
            log,
            path=ready_path,
            within=ready_timeout,
            want_status=ready_status,
        )
        yield RunningServer(name, "127.0.0.1", port, process, log)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(stop_timeout):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _fresh_database(data_dir: Path, name: str) -> Path:
    """Make `data_dir` and remove a database (and its WAL files) left there by an earlier run."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@asynccontextmanager
async def start_bench_server(
    kind: str, data_dir: Path, port: int | None = None
) -> AsyncIterator[RunningServer]:
    """One of `loadgen.peers.servers`' baselines: "bare", "quart" or "echo"."""
    port = port or free_port()
    argv = _python("loadgen.peers.servers", kind, "--port", str(port))
    async with serve_process(kind, argv, port, data_dir / f"{kind}.log") as server:
        yield server


@asynccontextmanager
async def start_naive_server(
    data_dir: Path, port: int | None = None
) -> AsyncIterator[RunningServer]:
    """The naive peer (`loadgen.peers.naive`) with a fresh SQLite file in `data_dir`."""
    port = port or free_port()
    db = _fresh_database(data_dir, "naive.db")
    argv = _python("loadgen.peers.naive", "--port", str(port), "--db", str(db))
    async with serve_process("naive", argv, port, data_dir / "naive.log") as server:
        yield server


@asynccontextmanager
async def start_tap_server(
    port: int | None,
    config_overrides: Mapping[str, Any] | None,
    data_dir: Path,
    *,
    config_path: str | Path | None = None,
    ready_timeout: float = 60.0,
) -> AsyncIterator[RunningServer]:
    """tap itself: `migrate`, then `serve` on 127.0.0.1:`port` with its data in `data_dir`.

    `config_path` is an optional TOML overlay (`--config`), `config_overrides` become `TAP__…`
    variables on top (see `tap_environment`). Raises `ServerFailed` with the log's tail when
    tap cannot be started; check `tap_unavailable()` first to skip cleanly.
    """
    port = port or free_port()
    _fresh_database(data_dir, "tap.db")
    env = {**os.environ, **tap_environment(port, data_dir, config_overrides)}
    config = ["--config", str(config_path)] if config_path is not None else []
    log = data_dir / "tap.log"
    await _run_to_completion(_python(TAP_CLI, "migrate", *config), env, log)
    # Ready for bets: /healthz `pass` (the breaker closed), not merely /readyz.
    async with serve_process(
        "tap",
        _python(TAP_CLI, "serve", *config),
        port,
        log,
        env=env,
        ready_path="/healthz",
        ready_status="pass",
        ready_timeout=ready_timeout,
    ) as server:
        yield server
