"""The edge's Quart-trio app: what every request goes through, whichever route it reaches.

It decides the app-level concerns: the body limit (refused before auth or parsing) and the
`Connection: close` of a response sent before its request's body was read (`CloseUnreadBody`),
the request id (`X-Request-ID`, echoed or generated, on the WebSocket's 101 too), the security
headers and CORS, the request metrics and the access log, and the error model every refusal is
mapped to. It leaves the routes to the blueprints of `tap.edge.routes` and what they call to
`EdgeServices` and `tap.edge.health`. It holds no money state. The app is served by
`hypercorn.trio.serve` from the supervisor's nursery; nothing runs in `app.nursery` (DESIGN
rule 3).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tap import web
from tap.edge.fastlane import BetFastLane
from tap.edge.health import Health
from tap.edge.http import EXTENSION, Edge, error_response, json_response
from tap.edge.routes import BLUEPRINTS
from tap.edge.services import EdgeServices
from tap.errors import ApiError
from tap.ratelimit import KeyedLimiter, parse_networks
from tap.runtime import logs, metrics

log = logging.getLogger("tap.edge")
access_log = logging.getLogger("tap.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
_SECURITY_HEADER_LIST = list(_SECURITY_HEADERS.items())
# What an answer to a configured CORS origin carries besides `Access-Control-Allow-Origin`.
CORS_HEADERS = [
    ("Vary", "Origin"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Prefer, X-Request-ID"),
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    (
        "Access-Control-Expose-Headers",
        "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset",
    ),
]


class CloseUnreadBody:
    """ASGI wrapper: a response sent before its request's body was read to the end (and any
    413) says `Connection: close`, and the connection is then really closed (API.md; issue 9,
    defect 7).

    Why: Hypercorn closes such a connection from inside the app's final `send`, after it has put
    `http.disconnect` on the app's queue — and quart-trio cancels the request the moment it reads
    that disconnect, so the cancellation landed inside Hypercorn's close (`send_eof`) and the
    connection stayed open, h11 still inside the old request: the client's next request on it
    waited forever (a 413 on keep-alive, 50 sockets held indefinitely). The same cancellation hit
    every keep-alive response, just before Hypercorn re-armed the connection's idle timer: after
    its first request no connection ever timed out, and idle sockets were held forever. The final
    send is therefore shielded: Hypercorn finishes closing, or recycling a keep-alive connection
    and re-arming its idle timer (`server.keep_alive_timeout_s`). Its parts are bounded: the
    socket send by TCP_USER_TIMEOUT, the queue put by quart's reader, which keeps draining the
    queue while the request lives.

    Closing politely: the response goes out whole first, then what the client is still sending is
    read and discarded for at most `linger_s` / `linger_bytes` before the close (a close with
    unread data in the socket would reset the connection, and some clients then lose the
    response they were sent). A client that reads the answer and hangs up ends this at once.
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        *,
        linger_bytes: int,
        linger_s: float,
    ) -> None:
        self.app = app
        self.linger_bytes = linger_bytes
        self.linger_s = linger_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self.app(scope, receive, _with_request_id(scope, send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ended = not _has_body(scope)
        closing = False
        lingering: trio.CancelScope | None = None

        async def tracked_receive() -> Any:
            nonlocal ended
            event = await receive()
            if event["type"] == "http.disconnect" or (
                event["type"] == "http.request" and not event.get("more_body", False)
            ):
                ended = True
                if lingering is not None:
                    lingering.cancel()  # quart's own reader took the last event
            return event

        async def finishing_send(message: Any) -> None:
            nonlocal closing, lingering
            if message["type"] == "http.response.start" and (not ended or message["status"] == 413):
                closing = True
                headers = list(message.get("headers") or [])
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                if closing and not ended:
                    await deliver({**message, "more_body": True})  # the whole answer, now
                    message = {"type": "http.response.body", "body": b"", "more_body": False}
                    drained = 0
                    with trio.move_on_after(self.linger_s) as lingering:
                        while not ended and drained <= self.linger_bytes:
                            drained += len((await tracked_receive()).get("body") or b"")
                with trio.CancelScope(shield=True):
                    await deliver(message)
                return
            await deliver(message)

        async def deliver(message: Any) -> None:
            try:
                await send(message)
            except trio.BusyResourceError:
                # Past our `Connection: close`, bytes from the client are a protocol error to
                # h11, and Hypercorn closes the socket at once — possibly while this send waits
                # for it. Nothing is left to deliver on a connection being closed.
                if not closing:
                    raise

        await self.app(scope, tracked_receive, finishing_send)


def _has_body(scope: Any) -> bool:
    """Whether the request announced a body (h11 has vetted the framing headers)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _with_request_id(scope: Any, send: Any) -> Any:
    """The WebSocket handshake's 101 carries `X-Request-ID` too (echoed or generated)."""
    rid = next(
        (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), ""
    )
    rid = rid if _REQUEST_ID.match(rid) else secrets.token_hex(8)
    logs.REQUEST_ID.set(rid)  # the connection's tasks inherit it: every line it logs has it

    async def send_with_id(message: Any) -> None:
        if message["type"] == "websocket.accept":
            headers = list(message.get("headers") or [])
            headers.append((b"x-request-id", rid.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_id


_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)


def create_app(svc: EdgeServices, *, fast_lane: bool = True) -> QuartTrio:
    """The edge's Quart app over `svc`: the app-level concerns, then the routes' blueprints.

    Here: the body limit and `Connection: close` wrapper, the request id and the access log, the
    security headers and CORS, the request metrics (labelled by URL rule), and the error model
    for every refusal a handler raises (`ApiError`), Quart raises (`HTTPException`) or nobody
    meant (`500` with the request id). The routes are `tap.edge.routes`' blueprints; they reach
    `svc` through the one `Edge` this puts in `app.extensions` (`tap.edge.http.edge()`).
    `POST /api/bets` is answered by `tap.edge.fastlane` with the same parts (`fast_lane=False`:
    by its Quart route, which tests compare it with).
    """
    cfg = svc.cfg
    app = QuartTrio("tap")
    cors_origins = set(cfg.server.cors_origins)
    # `POST /api/bets` is answered by the fast lane (the hot route, without Quart's per-request
    # machinery, `tap.edge.fastlane`); inside `CloseUnreadBody`, like every route.
    lane = BetFastLane(
        app.asgi_app,
        svc,
        request_id_ok=lambda rid: _REQUEST_ID.match(rid) is not None,
        security_headers=_SECURITY_HEADER_LIST,
        cors_headers=CORS_HEADERS,
        cors_origins=cors_origins,
    )
    app.asgi_app = CloseUnreadBody(  # type: ignore[method-assign]
        lane if fast_lane else app.asgi_app,
        linger_bytes=16 * cfg.limits.max_body_bytes,
        linger_s=2.0,
    )
    app.config["MAX_CONTENT_LENGTH"] = cfg.limits.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    app.extensions[EXTENSION] = Edge(
        svc=svc,
        health=Health(svc),
        challenge_limiter=KeyedLimiter(cfg.limits.challenge_rate_per_s, cfg.limits.challenge_burst),
        trusted_proxies=parse_networks(cfg.server.trusted_proxies),
        admin_token=svc.admin_token.encode() if svc.admin_token else None,
    )
    app.register_blueprint(web.create_blueprint())  # the player's page: GET / and /web/…
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)

    # ── request bookkeeping ────────────────────────────────────────────────────────────────

    @app.before_request
    async def stamp_request() -> None:
        rid = request.headers.get("X-Request-ID", "")
        request.request_id = rid if _REQUEST_ID.match(rid) else secrets.token_hex(8)  # type: ignore[attr-defined]
        logs.REQUEST_ID.set(request.request_id)  # type: ignore[attr-defined]
        request.started = time.perf_counter()  # type: ignore[attr-defined]
        length = request.content_length
        if length is not None and length > cfg.limits.max_body_bytes:
            # Refuse before auth or parsing: a huge body is never read (chunked bodies are
            # caught by Quart's MAX_CONTENT_LENGTH while reading).
            raise ApiError(
                "payload_too_large", f"body larger than {cfg.limits.max_body_bytes} bytes"
            )

    @app.after_request
    async def finish_request(response: Response) -> Response:
        """Every answer's headers (security, request id, CORS for a configured origin), its
        count and latency under the URL rule (`unmatched` for a 404 no route matched, so a
        scan cannot mint label values), and its access-log line."""
        rid = getattr(request, "request_id", None) or secrets.token_hex(8)
        # `extend`, not `setdefault` per header: werkzeug answers a missing key by building an
        # exception, and no handler sets these headers itself.
        # The web client's page needs a CSP of 'self'; every other response keeps 'none'.
        response.headers.extend(
            web.SECURITY_HEADERS if request.blueprint == "web" else _SECURITY_HEADER_LIST
        )
        response.headers["X-Request-ID"] = rid
        origin = request.headers.get("Origin") if cors_origins else None
        if origin and origin in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.extend(CORS_HEADERS)
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = response.status_code
        # The method is the client's text (h11 takes any token): only the ones HTTP names become
        # a label, or a client could mint one metric series per request.
        method = request.method if request.method in _METHODS else "other"
        metrics.child(metrics.HTTP_REQUESTS, rule, method, str(status)).inc()
        started = getattr(request, "started", None)
        elapsed = time.perf_counter() - started if started is not None else None
        if elapsed is not None:
            metrics.child(metrics.HTTP_LATENCY, rule).observe(elapsed)
        # The access log: one line per request, request id from the context (logs.REQUEST_ID).
        level = logging.ERROR if status >= 500 else logging.INFO
        if access_log.isEnabledFor(level):  # the fields cost more than the check
            access_log.log(
                level,
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": rule,
                    "status": status,
                    "duration_ms": None if elapsed is None else round(elapsed * 1000, 3),
                },
            )
        return response

    @app.errorhandler(ApiError)
    async def on_api_error(err: ApiError) -> Response:
        if request.path == "/api/bets" and request.method == "POST":
            metrics.child(metrics.BETS, "refused", err.code).inc()
        return error_response(err)

    @app.errorhandler(HTTPException)
    async def on_http_error(err: HTTPException) -> Response:
        status = err.code or 500
        code = _HTTP_CODES.get(status, "invalid_request" if status < 500 else "internal_error")
        if status == 413:
            message = f"body larger than {cfg.limits.max_body_bytes} bytes"
        else:
            message = err.description or err.name
        return json_response({"error": {"code": code, "message": message}}, status)

    @app.errorhandler(Exception)
    async def on_unexpected(err: Exception) -> Response:
        rid = getattr(request, "request_id", "-")
        log.exception("unhandled error", extra={"request_id": rid})
        return json_response(
            {"error": {"code": "internal_error", "message": "internal error", "request_id": rid}},
            500,
        )

    return app
