"""The same-run baselines tap's bench is compared with, each served by `hypercorn.trio.serve`.

- `bare`: a raw ASGI app that answers every request `202` with a small JSON body — the floor
  cost of Hypercorn-on-trio itself.
- `quart`: a minimal Quart-trio app with one `POST /api/bets` route that reads the body and
  answers `202` — the floor cost of the framework tap's edge is written in.
- `echo`: a Quart-trio WebSocket at `/ws` that sends every text frame straight back — the floor
  cost of tap's WebSocket `place_bet` path.
- `shape`: the same-shape ceiling of tap's HTTP bet path — a minimal Quart-trio `POST /api/bets`
  that answers `202` *and* pushes one `bet_confirmed`-sized frame to the client's WebSocket (the
  one that sent `auth` with the request's bearer token), as tap does for every committed bet. No
  signature, no ledger, no commit: what "202 then confirm" costs in the stack alone.

All of them answer `GET /readyz` with 200 so `loadgen.peers.targets` can wait for them. They run in
their
own process (`python -m loadgen.peers.servers bare --port 9001`) so server and generator never share
one interpreter's GIL. Hypercorn runs on its defaults, as tap's edge does, so the comparison is
between apps and not between server settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ACCEPTED_BODY = b'{"status":"pending"}'
_encoder = msgspec.json.Encoder()
_JSON = [(b"content-type", b"application/json")]


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI: 202 to anything (200 to the health routes), after reading the whole body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status = 200 if scope["path"] in ("/readyz", "/livez") else 202
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", b"%d" % len(ACCEPTED_BODY))],
        }
    )
    await send({"type": "http.response.body", "body": ACCEPTED_BODY})


def quart_app() -> Any:
    """Quart-trio, one route: the framework's own per-request cost and nothing of tap's."""
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("loadgen-quart")

    @app.post("/api/bets")
    async def place_bet() -> Response:
        await request.get_data()
        return Response(ACCEPTED_BODY, status=202, content_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"pass"}', status=200, content_type="application/json")

    return app


def echo_app() -> Any:
    """Quart-trio WebSocket echo at /ws: receive a frame, send it back."""
    from quart import Response, websocket
    from quart_trio import QuartTrio

    app = QuartTrio("loadgen-echo")

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        while True:
            await websocket.send(await websocket.receive())

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"pass"}', status=200, content_type="application/json")

    return app


def confirmed_frame(bet_id: str) -> str:
    """A frame the size and shape of tap's `bet_confirmed` (bet and balance inside)."""
    return _encoder.encode(
        {
            "type": "bet_confirmed",
            "bet": {
                "bet_id": bet_id,
                "address": "0x" + "ab" * 20,
                "cell_id": "BTC-USD:359000012:10012",
                "amount": 100_000,
                "multiplier_bps": 29_600,
                "nonce": "k3j9x0a2mq7w-1f-3a",
                "status": "confirmed",
                "accepted_at": 1_795_000_000_000,
                "confirmed_at": 1_795_000_000_004,
            },
            "balance": {"available": 999_900_000, "locked": 100_000},
        }
    ).decode()


def shape_app() -> Any:
    """Quart-trio: `POST /api/bets` answers 202 and queues one frame for the bearer's WebSocket.

    Each WebSocket at `/ws` first sends `{"type": "auth", "token": T}` and waits for
    `{"type": "ready"}`; a bet with
    `Authorization: Bearer T` then pushes a `bet_confirmed` frame carrying the bet id of its
    202 to that socket, through a per-connection queue and writer task, as tap's hub does.
    """
    from quart import Response, request, websocket
    from quart_trio import QuartTrio

    app = QuartTrio("loadgen-shape")
    sockets: dict[str, trio.MemorySendChannel[str]] = {}
    seq = 0

    @app.post("/api/bets")
    async def place_bet() -> Response:
        nonlocal seq
        await request.get_data()
        token = request.headers.get("Authorization", "").partition(" ")[2]
        seq += 1
        bet_id = f"b{seq:024x}"
        out = sockets.get(token)
        if out is not None:
            try:
                out.send_nowait(confirmed_frame(bet_id))
            except (trio.WouldBlock, trio.BrokenResourceError):
                pass  # a client that stopped reading loses its frames (and the bench sees it)
        body = _encoder.encode({"bet_id": bet_id, "status": "pending"})
        return Response(body, status=202, content_type="application/json")

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        raw = await websocket.receive()
        token = str(msgspec.json.decode(raw).get("token", ""))
        # One bench user has one bet in flight; 256 frames is far beyond any backlog it makes.
        send, receive = trio.open_memory_channel[str](256)
        sockets[token] = send
        await websocket.send('{"type":"ready"}')  # registered: bets may push to it from now on
        try:
            async for frame in receive:
                await websocket.send(frame)
        finally:
            if sockets.get(token) is send:
                del sockets[token]

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"pass"}', status=200, content_type="application/json")

    return app


APPS: dict[str, Callable[[], Any]] = {
    "bare": lambda: bare_app,
    "quart": quart_app,
    "echo": echo_app,
    "shape": shape_app,
}


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.peers.servers", description=__doc__)
    parser.add_argument("app", choices=sorted(APPS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = APPS[args.app]()
    try:
        trio.run(serve, app, hypercorn_config(args.host, args.port))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
