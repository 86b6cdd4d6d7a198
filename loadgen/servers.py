"""The same-run baselines tap's bench is compared with, each served by `hypercorn.trio.serve`.

- `bare`: a raw ASGI app that answers every request `202` with a small JSON body — the floor
  cost of Hypercorn-on-trio itself.
- `quart`: a minimal Quart-trio app with one `POST /api/bets` route that reads the body and
  answers `202` — the floor cost of the framework tap's edge is written in.
- `echo`: a Quart-trio WebSocket at `/ws` that sends every text frame straight back — the floor
  cost of tap's WebSocket `place_bet` path.

All three answer `GET /readyz` with 200 so `loadgen.targets` can wait for them. They run in their
own process (`python -m loadgen.servers bare --port 9001`) so server and generator never share
one interpreter's GIL. Hypercorn runs on its defaults, as tap's edge does, so the comparison is
between apps and not between server settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ACCEPTED_BODY = b'{"status":"pending"}'
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


APPS: dict[str, Callable[[], Any]] = {
    "bare": lambda: bare_app,
    "quart": quart_app,
    "echo": echo_app,
}


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.servers", description=__doc__)
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
