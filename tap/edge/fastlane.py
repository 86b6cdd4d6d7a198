"""`POST /api/bets` answered at the ASGI layer of the edge's app, without Quart's per-request
machinery; every other request goes on to Quart.

Why: the bet route is the hot path (issue 12), and on it Quart's own work — a request and an app
context, signals, hooks, a second task and a nursery per request, a werkzeug `Response` — cost
about as much as the route itself: a bare ASGI 202 took 1.4 ms of server CPU per request where
the minimal Quart route took 2.9 (`loadgen bench`, same run). Here the same answer is built from
the same parts: `bet_answer` (the route's logic, shared with the Quart route), the app's error
model (`ApiError` → `error_headers`, an unexpected error → 500 with the request id), its request
id, security headers, CORS, metrics and access log (the values `tap.edge.app`'s hooks give).
tests/test_fastlane.py sends the same requests through both and compares the answers.

It sits inside `CloseUnreadBody`, so a refusal sent before the body was read says
`Connection: close` as on every route. A body is read to its end or refused: over
`limits.max_body_bytes` (by `Content-Length` before reading, or while reading a chunked one) →
413; not complete within `BODY_TIMEOUT_S` → 408, as Quart's `BODY_TIMEOUT`. A client that
disconnects before its body is complete gets nothing (Quart cancels the handler then); one that
disconnects while its bet commits is answered into the closed connection, which Hypercorn drops.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from tap.edge.http import error_headers, session_for
from tap.edge.routes.bets import bet_answer
from tap.edge.services import EdgeServices
from tap.errors import ApiError
from tap.runtime import logs, metrics

log = logging.getLogger("tap.edge")
access_log = logging.getLogger("tap.access")

ROUTE = "/api/bets"
BODY_TIMEOUT_S = 60.0  # Quart's BODY_TIMEOUT default, which the other routes keep
_encoder = msgspec.json.Encoder()
_TIMEOUT_MESSAGE = (
    "The server closed the network connection because the browser didn't finish the request "
    "within the specified time."
)


class _Gone(Exception):
    """The client disconnected before its body was complete: nobody to answer."""


class BetFastLane:
    """ASGI: `POST /api/bets` here, everything else to `app` (the Quart app's `asgi_app`).

    `request_id_ok`, `security_headers` and `cors_headers` are `tap.edge.app`'s (one definition
    of each)."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        svc: EdgeServices,
        *,
        request_id_ok: Callable[[str], bool],
        security_headers: list[tuple[str, str]],
        cors_headers: list[tuple[str, str]],
        cors_origins: set[str],
    ) -> None:
        self.app = app
        self.svc = svc
        self.max_body = svc.cfg.limits.max_body_bytes
        self.request_id_ok = request_id_ok
        self.security = _raw(security_headers)
        self.cors = _raw(cors_headers)
        self.cors_origins = cors_origins

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != ROUTE
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        await self._bet(scope, receive, send)

    async def _bet(self, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        auth = prefer = rid = origin = ""
        length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = auth or value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"prefer":
                prefer = prefer or value.decode("latin-1")
            elif name == b"x-request-id":
                rid = rid or value.decode("latin-1")
            elif name == b"origin":
                origin = origin or value.decode("latin-1")
        rid = rid if self.request_id_ok(rid) else secrets.token_hex(8)
        logs.REQUEST_ID.set(rid)
        try:
            # h11 vetted the digits; their count bounds int() (thousands of digits raise)
            if length is not None and (len(length) > 18 or int(length) > self.max_body):
                raise ApiError("payload_too_large", self.too_large)
            session = session_for(self.svc, auth)
            data = await self._body(receive)
            payload, status, headers = await bet_answer(self.svc, session, data, prefer or None)
        except _Gone:
            return
        except ApiError as err:
            metrics.child(metrics.BETS, "refused", err.code).inc()
            payload, status, headers = err.body(), err.status, error_headers(err)
        except _TooLarge:
            payload, status, headers = _http_error("payload_too_large", self.too_large, 413)
        except _TimedOut:
            payload, status, headers = _http_error("invalid_request", _TIMEOUT_MESSAGE, 408)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            payload = {
                "error": {"code": "internal_error", "message": "internal error", "request_id": rid}
            }
            status, headers = 500, {}
        await self._answer(send, status, payload, headers, rid, origin, started)

    @property
    def too_large(self) -> str:
        return f"body larger than {self.max_body} bytes"

    async def _body(self, receive: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(BODY_TIMEOUT_S):
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    raise _Gone
                chunk = event.get("body") or b""
                size += len(chunk)
                if size > self.max_body:
                    raise _TooLarge
                chunks.append(chunk)
                if not event.get("more_body", False):
                    return b"".join(chunks)
        raise _TimedOut

    async def _answer(
        self,
        send: Any,
        status: int,
        payload: Any,
        headers: dict[str, str],
        rid: str,
        origin: str,
        started: float,
    ) -> None:
        body = _encoder.encode(payload)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-type", b"application/json"))
        raw.append((b"content-length", str(len(body)).encode()))
        raw.extend(self.security)
        raw.append((b"x-request-id", rid.encode()))
        if origin and origin in self.cors_origins:
            raw.append((b"access-control-allow-origin", origin.encode("latin-1")))
            raw.extend(self.cors)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        metrics.child(metrics.HTTP_REQUESTS, ROUTE, "POST", str(status)).inc()
        elapsed = time.perf_counter() - started
        metrics.child(metrics.HTTP_LATENCY, ROUTE).observe(elapsed)
        level = logging.ERROR if status >= 500 else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(
                level,
                "request",
                extra={
                    "method": "POST",
                    "path": ROUTE,
                    "route": ROUTE,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )


class _TooLarge(Exception):
    """A chunked body grew past the limit while it was read."""


class _TimedOut(Exception):
    """The body did not complete within `BODY_TIMEOUT_S`."""


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _http_error(code: str, message: str, status: int) -> tuple[Any, int, dict[str, str]]:
    """A refusal as `tap.edge.app`'s `HTTPException` handler shapes it (no `Retry-After`)."""
    return {"error": {"code": code, "message": message}}, status, {}
