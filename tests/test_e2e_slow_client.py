"""A WebSocket client that stops reading stalls nobody but itself, and cannot hold up shutdown.

The stalled client is a raw socket with a tiny receive buffer that does the WebSocket handshake,
subscribes to prices and the grid, and never reads again. While the feed is pushed hard, a normal
client still receives every price; then the whole server stops within its graceful timeout plus a
second: Hypercorn's shielded send to the stalled socket is ended by the kernel's send timeout
(`server.send_timeout_ms`, TCP_USER_TIMEOUT), which therefore also bounds shutdown.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from pathlib import Path

import trio

from tests.e2e import connect_ws, start_server

TICKS = 400


def masked_text_frame(text: str) -> bytes:
    """One client→server text frame (RFC 6455: client frames are masked)."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    assert n < 126, "a short frame is all this client sends"
    header = bytes([0x81, 0x80 | n])
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def stalled_client(port: int, channels: list[str]) -> trio.socket.SocketType:
    """Connect with a tiny receive buffer, upgrade to WebSocket, subscribe, and return the socket
    (which the caller then never reads)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await sock.send(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await sock.recv(1)  # byte by byte: read nothing past the handshake
        assert chunk, "server closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    frame = json.dumps({"type": "subscribe", "channels": channels})
    await sock.send(masked_text_frame(frame))
    return sock


def dropped_frames(metrics_text: str) -> float:
    m = re.search(r"^tap_ws_dropped_frames_total (\S+)$", metrics_text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_a_stalled_ws_client_stalls_nobody_and_shutdown_stays_bounded(
    tmp_path: Path,
) -> None:
    stalled: trio.socket.SocketType | None = None
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await start_server(
                nursery,
                tmp_path,
                markets__0__rows=64,  # big grid frames fill the stalled socket's buffers fast
                # The kernel send timeout (TCP_USER_TIMEOUT) is what ends Hypercorn's shielded
                # send to a socket that stopped reading; shutdown takes at most the longer of it
                # and the graceful timeout, so keep it at the graceful timeout here.
                server__send_timeout_ms=1000,
            )
            graceful_s = server.cfg.server.graceful_timeout_s
            client = server.http()
            before = dropped_frames((await client.get("/metrics")).text)
            channels = [f"prices:{server.symbol}", f"grid:{server.symbol}"]
            stalled = await stalled_client(server.running.port, channels)
            async with connect_ws(server) as good:
                await good.subscribe(f"prices:{server.symbol}")
                price = server.last_price
                for i in range(TICKS):
                    price += 10 if i % 2 else -10
                    tick = server.push(price)
                    got = await good.next_of_type("price", where=lambda f, t=tick: f["ts"] == t.ts)
                    assert got["price"] == tick.price
                    if i % 50 == 0:
                        await good.ping()
                # The stalled client's writer really is stuck: its frames were coalesced.
                after = dropped_frames((await client.get("/metrics")).text)
                assert after > before
                assert (await client.get("/livez")).status_code == 200
            await server.aclose()
            # Shutdown: stop admission, drain, close every connection — the stalled one too.
            with trio.fail_after(graceful_s + 1):
                server.running.stop.set()
                await server.done.wait()
    assert stalled is not None
    stalled.close()


async def test_websockets_that_came_and_went_do_not_hold_up_shutdown(tmp_path: Path) -> None:
    """A closed WebSocket leaves nothing behind that shutdown must wait out (Hypercorn's own ping
    task would sleep out its interval; with a 10 s graceful timeout this would take 10 s)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, tmp_path, server__graceful_timeout_s=10.0)
            for _ in range(3):
                async with connect_ws(server) as ws:
                    await ws.subscribe(f"prices:{server.symbol}")
            async with connect_ws(server) as ws:  # one still open when the stop comes
                await ws.ping()
                await server.aclose()
                with trio.fail_after(5):
                    server.running.stop.set()
                    await server.done.wait()
