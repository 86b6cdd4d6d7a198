"""The core's HTTP surface: `/livez`, `/readyz`, `/healthz` and `/metrics`, nothing else.

The core (`tap serve --role core`) answers no player: bets reach it over the bus. Operators and
Prometheus still need to see it, so it serves the four operations endpoints of API.md with the
same bodies as an edge, as a bare ASGI app (no routing framework for four fixed paths). It
decides nothing: the supervisor hands it the readiness and health functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Checks = dict[str, Any]
Readiness = Callable[[], Awaitable[tuple[bool, Checks]]]
Health = Callable[[], Awaitable[tuple[str, Checks]]]

_encoder = msgspec.json.Encoder()
_HEALTH_JSON = b"application/health+json"


class OpsApp:
    """ASGI: GET the four paths; anything else is 404, a non-GET 405; lifespan accepted."""

    def __init__(self, readiness: Readiness, health: Health, now_ms: Callable[[], int]) -> None:
        self._readiness = readiness
        self._health = health
        self._now_ms = now_ms

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # a WebSocket to the core: closed without a word
        status, body, content_type = await self._answer(scope["method"], scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, method: str, path: str) -> tuple[int, bytes, bytes]:
        if path not in ("/livez", "/readyz", "/healthz", "/metrics"):
            return (
                404,
                b'{"error":{"code":"not_found","message":"the core serves only /livez, '
                b'/readyz, /healthz and /metrics"}}',
                b"application/json",
            )
        if method != "GET":
            return (
                405,
                b'{"error":{"code":"method_not_allowed","message":"GET only"}}',
                b"application/json",
            )
        if path == "/livez":
            return 200, b'{"status":"pass"}', _HEALTH_JSON
        if path == "/readyz":
            ready, checks = await self._readiness()
            body = _encoder.encode({"status": "pass" if ready else "fail", "checks": checks})
            return (200 if ready else 503), body, _HEALTH_JSON
        if path == "/healthz":
            status, checks = await self._health()
            now = self._now_ms()
            body = _encoder.encode({"status": status, "timestamp": now, "checks": checks})
            return (503 if status == "fail" else 200), body, _HEALTH_JSON
        return 200, generate_latest(), CONTENT_TYPE_LATEST.encode()
