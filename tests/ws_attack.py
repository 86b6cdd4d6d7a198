"""A real `tap serve` under WebSocket attack, and a bystander who watches it (not a test module).

`serve_process` starts the server as `make run` does (simulated feed, embedded defaults, port 0)
in a subprocess, so a crash is a dead process, not a dead test runner. `Bystander` is a second,
well-behaved client in its own process (`python -m tests.ws_attack URL SYMBOL`, so the attackers'
CPU in the test process does not colour its figures): it polls `/livez` back to back (each round
trip is a measure of how late the server's event loop answers) and records every `price` frame
of its subscription, so a test can ask, for any window of wall time, "how long did the loop keep
us waiting, and did the price stream skip?". `send_raw_text` writes a text frame whose payload is
arbitrary bytes (invalid UTF-8), which no WebSocket library will produce.

Figures recorded here are reported, never asserted on (tests assert behaviour, not timings).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket

from tests.procs import ROOT, server_env

SERVING = re.compile(rb"tap is serving on (http://\S+)")


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    symbol: str
    max_gap_ms: int

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@contextmanager
def serve_process(tmp: Path, **overrides: str) -> Iterator[Served]:
    """`tap serve` on the embedded defaults (simulated feed, 50 ms ticks, 1 s columns), ready."""
    env = server_env(tmp, TAP__MARKETS__0__COLUMN_MS="1000", **overrides)
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tap.runtime.cli", "serve"],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        assert proc.stdout is not None
        buf = b""
        deadline = time.monotonic() + 60
        while not (m := SERVING.search(buf)):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, (
                f"server did not start: {buf!r}\n{log_path.read_text(errors='replace')[-3000:]}"
            )
            buf += line
        # Keep draining stdout so the server can never block on a full pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        url = m.group(1).decode()
        with httpx.Client(base_url=url, timeout=10) as c:
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "server never became ready"
                time.sleep(0.1)
            market = c.get("/api/markets").json()
        symbol = (market["markets"] if isinstance(market, dict) else market)[0]["symbol"]
        yield Served(url, proc, log_path, symbol, max_gap_ms=2000)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Bystander:
    """A well-behaved client in its own process (so the attackers' CPU in the test process does
    not colour its figures): /livez round trips and the price stream, streamed back as lines."""

    served: Served
    livez: list[tuple[float, float]] = field(default_factory=list)  # (monotonic at send, rtt s)
    prices: list[tuple[float, int]] = field(default_factory=list)  # (monotonic at receipt, ts)
    failures: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ws_attack", self.served.url, self.served.symbol],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not (self.prices and self.livez):
            assert time.monotonic() < deadline, f"bystander never got going: {self.failures}"
            time.sleep(0.05)

    def _collect(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:  # CLOCK_MONOTONIC is one clock for every process
            kind, a, b = line.split(" ", 2)
            if kind == "livez":
                self.livez.append((float(a), float(b)))
            elif kind == "price":
                self.prices.append((float(a), int(b)))
            else:
                self.failures.append(f"{a} {b}".strip())

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._thread is not None:
            self._thread.join(10)

    def window(self, start: float, end: float) -> dict[str, Any]:
        """What the bystander saw between two `time.monotonic()` readings."""
        rtts = [rtt for sent, rtt in self.livez if start <= sent <= end]
        ts = [t for at, t in self.prices if start <= at <= end]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        return {
            "livez_round_trips": len(rtts),
            "worst_livez_ms": round(max(rtts, default=0.0) * 1000, 1),
            "median_livez_ms": round(sorted(rtts)[len(rtts) // 2] * 1000, 1) if rtts else None,
            "price_frames": len(ts),
            "max_price_gap_ms": max(gaps, default=0),
        }


async def _bystander(url: str, symbol: str) -> None:
    """The bystander process: one line per /livez round trip, price frame or failure."""

    def emit(kind: str, a: object, b: object) -> None:
        print(kind, a, b, flush=True)

    async def poll_livez() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while True:
                sent = time.monotonic()
                try:
                    r = await client.get("/livez")
                except httpx.HTTPError as e:
                    emit("failure", "/livez", repr(e).replace("\n", " "))
                    await trio.sleep(0.1)
                    continue
                emit("livez", sent, time.monotonic() - sent)
                if r.status_code != 200:
                    emit("failure", "/livez", r.status_code)
                await trio.sleep(0.01)

    async def read_prices() -> None:
        ws_url = "ws" + url.removeprefix("http") + "/ws"
        try:
            async with trio_websocket.open_websocket_url(
                ws_url, connect_timeout=10, disconnect_timeout=1
            ) as ws:
                channel = f"prices:{symbol}"
                await ws.send_message(json.dumps({"type": "subscribe", "channels": [channel]}))
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame["type"] == "price":
                        emit("price", time.monotonic(), frame["ts"])
        except trio_websocket.ConnectionClosed as e:
            emit("failure", "price stream closed:", e.reason)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll_livez)
        nursery.start_soon(read_prices)


@contextmanager
def watching(served: Served) -> Iterator[Bystander]:
    bystander = Bystander(served)
    bystander.start()
    try:
        yield bystander
    finally:
        bystander.stop()


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One complete, masked client frame (RFC 6455 §5.2) with any payload bytes."""
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def send_raw_text(ws: trio_websocket.WebSocketConnection, payload: bytes) -> None:
    """A text frame with `payload` as is (invalid UTF-8 included), written under the client's
    WebSocket: the client library would refuse to encode it, a hostile client would not."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await ws._stream.send_all(ws_frame(0x1, payload))


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        trio.run(_bystander, sys.argv[1], sys.argv[2])
