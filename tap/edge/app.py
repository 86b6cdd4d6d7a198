"""The HTTP + WebSocket edge of API.md on Quart-trio.

This module is routing and translation only: decode strictly, call the desk / the session book /
the read layer / the hub, encode, and map every refusal to API.md's error model. It holds no
money state. The app is served by `hypercorn.trio.serve` from the supervisor's nursery; nothing
runs in `app.nursery` (DESIGN rule 3).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tap import siwe, web
from tap.admission import valid_address
from tap.edge import openapi
from tap.edge.services import EdgeServices
from tap.edge.ws import serve_websocket
from tap.errors import STATUS, ApiError
from tap.messages import (
    BetRequest,
    BreakerRequest,
    ChallengeRequest,
    CreditRequest,
    DepositRequest,
    LoginRequest,
    WithdrawalRequest,
)
from tap.ratelimit import KeyedLimiter, client_address, client_key, parse_networks
from tap.runtime import logs, metrics
from tap.sessions import Session
from tap.wire import WireError, decode_untrusted

log = logging.getLogger("tap.edge")
access_log = logging.getLogger("tap.access")
T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# ASCII digits only (`\d` would take any script's), as many as sent: the value is capped, not
# converted (int() of 5,000 digits raises).
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*([0-9]+)", re.IGNORECASE | re.ASCII)
_QUERY_INT = re.compile(r"-?[0-9]{1,20}", re.ASCII)
MAX_CURSOR_CHARS = 128  # API.md bounds: cursors are opaque strings of at most 128 characters
_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
# The largest adjustment an operator may post (2⁵³ − 1 units, the largest integer every JSON client
# reads exactly). Unbounded, one typo would reach SQLite as an integer it cannot store (the writer
# fails and the process with it) or sum balances past int64.
MAX_ADJUSTMENT = 2**53 - 1
# How long a bet's request waits for its commit before answering 503 instead of a 202 that a
# crash could still undo (the writer commits within milliseconds; this is a stuck disk).
DURABLE_WAIT_S = 10
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
_SECURITY_HEADER_LIST = list(_SECURITY_HEADERS.items())


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        _encoder.encode(payload), status=status, headers=headers, content_type="application/json"
    )


def error_response(err: ApiError) -> Response:
    headers: dict[str, str] = {}
    if err.code == "rate_limited" and err.limit is not None:
        headers["RateLimit-Limit"] = str(err.limit)
        headers["RateLimit-Remaining"] = "0"
        headers["RateLimit-Reset"] = str(err.retry_after_s or 1)
    if err.retry_after_s is not None or err.status in (429, 503):
        headers["Retry-After"] = str(err.retry_after_s if err.retry_after_s is not None else 1)
    return json_response(err.body(), err.status, headers)


def decode_body(kind: type[T], data: bytes, max_bytes: int) -> T:
    """Untrusted bytes into a bounded Struct, or `400 invalid_request` / `413`: never another
    error. `tap.wire` checks size and nesting before msgspec runs (a library raises the recursion
    limit, so msgspec's own guard does not protect the C stack) and turns invalid UTF-8 inside a
    string — msgspec's `UnicodeDecodeError`, not a `DecodeError` — into the same refusal."""
    try:
        return decode_untrusted(data, kind, max_bytes=max_bytes)
    except WireError as e:
        raise ApiError(e.code, e.message) from None


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


def create_app(svc: EdgeServices) -> QuartTrio:
    cfg = svc.cfg
    app = QuartTrio("tap")
    app.asgi_app = CloseUnreadBody(  # type: ignore[method-assign]
        app.asgi_app, linger_bytes=16 * cfg.limits.max_body_bytes, linger_s=2.0
    )
    app.config["MAX_CONTENT_LENGTH"] = cfg.limits.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    cors_origins = set(cfg.server.cors_origins)
    challenge_limiter = KeyedLimiter(cfg.limits.challenge_rate_per_s, cfg.limits.challenge_burst)
    app.register_blueprint(web.create_blueprint())  # the player's page: GET / and /web/…
    trusted = parse_networks(cfg.server.trusted_proxies)

    async def body() -> bytes:
        data = await request.get_data(cache=False, as_text=False)
        return data if isinstance(data, bytes) else data.encode()

    def session_or_401() -> Session:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError("unauthorized", "Authorization: Bearer <token> required")
        session = svc.sessions.lookup(token.strip(), svc.clock.now_ms())
        if session is None:
            raise ApiError("unauthorized", "session token is unknown or expired")
        return session

    admin_token = svc.admin_token.encode() if svc.admin_token else None

    def require_admin() -> None:
        if admin_token is None:
            raise ApiError("not_found", "admin routes are disabled (no TAP_ADMIN_TOKEN)")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # Bytes, in constant time: header values arrive as latin-1 text (any byte maps to one
        # character, so this re-encoding is exact), and `compare_digest` refuses non-ASCII str.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("latin-1", "replace"), admin_token
        ):
            raise ApiError("unauthorized", "admin bearer token required")

    def query_int(name: str, default: int, lo: int, hi: int) -> int:
        raw = request.args.get(name)
        if raw is None or raw == "":
            return default
        if not _QUERY_INT.fullmatch(raw):
            raise ApiError("invalid_request", f"{name}: expected an integer {lo}..{hi}")
        value = int(raw)  # at most 20 ASCII digits
        if not lo <= value <= hi:
            raise ApiError("invalid_request", f"{name}: expected {lo}..{hi}")
        return value

    def query_cursor() -> str | None:
        cursor = request.args.get("cursor") or None
        if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
            raise ApiError("invalid_request", f"cursor: at most {MAX_CURSOR_CHARS} characters")
        return cursor

    def client() -> str:
        """Who is asking (per-client limits): the socket peer, or the X-Forwarded-For hop a
        configured proxy vouches for."""
        forwarded = ",".join(request.headers.getlist("X-Forwarded-For")) if trusted else None
        return client_key(client_address(request.remote_addr, forwarded, trusted))

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
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, Prefer, X-Request-ID"
            )
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Expose-Headers"] = (
                "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
            )
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = response.status_code
        metrics.HTTP_REQUESTS.labels(rule, request.method, str(status)).inc()
        started = getattr(request, "started", None)
        elapsed = time.perf_counter() - started if started is not None else None
        if elapsed is not None:
            metrics.HTTP_LATENCY.labels(rule).observe(elapsed)
        # The access log: one line per request, request id from the context (logs.REQUEST_ID).
        access_log.log(
            logging.ERROR if status >= 500 else logging.INFO,
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
            metrics.BETS.labels("refused", err.code).inc()
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

    # ── auth ───────────────────────────────────────────────────────────────────────────────

    @app.post("/api/auth/challenge")
    async def challenge() -> Response:
        # Unauthenticated, and each challenge may end in a signature recovery and a login claim
        # (the claim store is bounded): one client may ask only so fast.
        who = client()
        wait_ms = challenge_limiter.take(who, svc.clock.now_ms())
        if wait_ms:
            raise ApiError(
                "rate_limited",
                "too many challenges",
                retry_after_s=-(-wait_ms // 1000),
                limit=cfg.limits.challenge_burst,
            )
        req = decode_body(ChallengeRequest, await body(), cfg.limits.max_body_bytes)
        address = req.address
        if not valid_address(address):
            raise ApiError("invalid_request", "address: expected 0x followed by 40 hex digits")
        ch = svc.sessions.issue_challenge(address, svc.clock.now_ms())
        return json_response(
            {
                "nonce": ch.nonce,
                "domain": cfg.auth.domain,
                "uri": cfg.auth.uri,
                "chain_id": cfg.auth.chain_id,
                "issued_at": siwe.ms_to_iso(ch.issued_at),
                "expiration_time": siwe.ms_to_iso(ch.expires_at),
            }
        )

    @app.post("/api/auth/login")
    async def login() -> Response:
        req = decode_body(LoginRequest, await body(), cfg.limits.max_body_bytes)
        session = await svc.login(req.message, req.signature, svc.clock.now_ms())
        return json_response(
            {
                "token": session.token,
                "address": session.address,
                "session_key": session.session_key,
                "expires_at": session.expires_at,
            }
        )

    # ── bets ───────────────────────────────────────────────────────────────────────────────

    @app.post("/api/bets")
    async def place_bet() -> Response:
        session = session_or_401()
        req = decode_body(BetRequest, await body(), cfg.limits.max_body_bytes)
        bet, admit = await svc.desk.place_with_admission(session, req)
        headers: dict[str, str] = {}
        if admit.tokens_left is not None:
            # The same headers a 429 carries, so a client can pace itself before it is refused.
            headers["RateLimit-Limit"] = str(cfg.limits.burst)
            headers["RateLimit-Remaining"] = str(admit.tokens_left)
            headers["RateLimit-Reset"] = str(-(-admit.full_in_ms // 1000))
        wait_s = _prefer_wait(request.headers.get("Prefer"))
        # A 202 is only ever sent for a bet that is durable (committed, fsync'd): a crash right
        # after the answer must not lose it. So every bet waits for its batch's commit (the
        # writer flushes `batcher.max_wait_ms` after the first item); `Prefer: wait` only
        # changes what the answer says. No checkpoint since the desk queued the bet, so the
        # commit cannot slip past the waiter.
        started = trio.current_time()
        final = await svc.wait_for_bet(bet.bet_id, max(wait_s, DURABLE_WAIT_S))
        if final is None:
            raise ApiError(
                "overloaded",
                "the bet was queued but not committed in time; it may still be: "
                "look it up by nonce before placing it again",
                retry_after_s=1,
                bet_id=bet.bet_id,
            )
        if final.accepted_at != bet.accepted_at:
            # The ledger answered with the bet an earlier request with this nonce made
            # (the hot state had forgotten the nonce, e.g. Redis lost its data): this
            # request is a replay, and nothing of it took effect.
            raise ApiError("replayed_nonce", "nonce already used", bet_id=final.bet_id)
        if final.status == "rejected":
            code = final.reason if final.reason in STATUS else "invalid_request"
            refusal = ApiError(code, f"the writer refused the bet: {final.reason}")
            if code == "replayed_nonce":
                refusal.extra["bet_id"] = final.bet_id
            raise refusal
        if wait_s and trio.current_time() - started <= wait_s:
            headers["Preference-Applied"] = f"wait={wait_s}"
            return json_response(msgspec.to_builtins(final), 201, headers)
        return json_response(
            {
                "bet_id": bet.bet_id,
                "status": "pending",
                "cell_id": bet.cell_id,
                "amount": bet.amount,
                "multiplier_bps": bet.multiplier_bps,
                "nonce": bet.nonce,
                "accepted_at": bet.accepted_at,
            },
            202,
            headers,
        )

    @app.get("/api/bets/<bet_id>")
    async def get_bet(bet_id: str) -> Response:
        session = session_or_401()
        # An id or nonce we could never have made is not looked up, nor echoed at any length.
        bet = await svc.bet(bet_id) if _PATH_ID.fullmatch(bet_id) else None
        if bet is None or bet.address != session.address:
            raise ApiError("not_found", f"no bet {_shown(bet_id)}")
        return json_response(bet)

    @app.get("/api/bets/by-nonce/<nonce>")
    async def get_bet_by_nonce(nonce: str) -> Response:
        session = session_or_401()
        bet = await svc.bet_by_nonce(session.address, nonce) if _NONCE.fullmatch(nonce) else None
        if bet is None:
            raise ApiError("not_found", f"no bet with nonce {_shown(nonce)}")
        return json_response(bet)

    @app.get("/api/bets")
    async def list_bets() -> Response:
        session = session_or_401()
        status = request.args.get("status") or None
        if status is not None and status not in _BET_STATUSES:
            raise ApiError("invalid_request", f"status: expected one of {sorted(_BET_STATUSES)}")
        limit = query_int("limit", 50, 1, 500)
        items, next_cursor = await svc.list_bets(session.address, status, limit, query_cursor())
        return json_response({"items": items, "next_cursor": next_cursor})

    # ── money ──────────────────────────────────────────────────────────────────────────────

    @app.get("/api/balance")
    async def balance() -> Response:
        session = session_or_401()
        available, locked = await svc.balance(session.address)
        return json_response(
            {
                "address": session.address,
                "available": available,
                "locked": locked,
                "as_of": svc.clock.now_ms(),
            }
        )

    @app.post("/api/deposits")
    async def deposit() -> Response:
        session = session_or_401()
        if not cfg.payments.mock_deposits:
            raise ApiError("not_found", "deposits are not enabled on this server")
        req = decode_body(DepositRequest, await body(), cfg.limits.max_body_bytes)
        if not 0 < req.amount <= cfg.payments.max_deposit:
            raise ApiError(
                "amount_out_of_range", f"amount must be within 1..{cfg.payments.max_deposit}"
            )
        entry = await svc.deposit(session.address, req.amount)
        return json_response({"entry": entry}, 201)

    @app.post("/api/withdrawals")
    async def withdraw() -> Response:
        session = session_or_401()
        req = decode_body(WithdrawalRequest, await body(), cfg.limits.max_body_bytes)
        entry = await svc.withdraw(session, req)
        return json_response({"entry": entry}, 201)

    @app.get("/api/ledger")
    async def ledger() -> Response:
        session = session_or_401()
        limit = query_int("limit", 50, 1, 500)
        items, next_cursor = await svc.ledger(session.address, limit, query_cursor())
        return json_response({"items": items, "next_cursor": next_cursor})

    # ── market data ────────────────────────────────────────────────────────────────────────

    @app.get("/api/markets")
    async def markets() -> Response:
        return json_response({"markets": [msgspec.to_builtins(m) for m in cfg.markets]})

    @app.get("/api/config")
    async def client_config() -> Response:
        # What a client needs before login: the chain to sign in on, and whether test funds
        # (mock deposits) exist — the web client offers its throwaway dev wallet only then.
        return json_response(
            {
                "chain_id": cfg.auth.chain_id,
                "mock_deposits": cfg.payments.mock_deposits,
                "max_deposit": cfg.payments.max_deposit if cfg.payments.mock_deposits else 0,
            }
        )

    @app.get("/api/grid/<symbol>")
    async def grid(symbol: str) -> Response:
        view = svc.grid(symbol)
        if view is None:
            raise ApiError("not_found", f"no market {_shown(symbol)} (or no price yet)")
        return json_response(view)

    @app.get("/api/prices/<symbol>")
    async def prices(symbol: str) -> Response:
        if cfg.market(symbol) is None:
            raise ApiError("not_found", f"no market {_shown(symbol)}")
        now = svc.clock.now_ms()
        start = query_int("from", now - 60_000, 0, MAX_ADJUSTMENT)
        end = query_int("to", now + 1, 0, MAX_ADJUSTMENT)
        limit = query_int("limit", 1000, 1, 10_000)
        ticks, next_from = await svc.ticks(symbol, start, end, limit)
        return json_response({"ticks": ticks, "next": next_from})

    # ── operations ─────────────────────────────────────────────────────────────────────────

    @app.get("/livez")
    async def livez() -> Response:
        return Response(b'{"status":"pass"}', 200, content_type="application/health+json")

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, checks = await svc.readiness()
        return Response(
            _encoder.encode({"status": "pass" if ready else "fail", "checks": checks}),
            200 if ready else 503,
            headers=None if ready else {"Retry-After": "1"},
            content_type="application/health+json",
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        status, checks = await svc.health()
        return Response(
            _encoder.encode({"status": status, "timestamp": svc.clock.now_ms(), "checks": checks}),
            503 if status == "fail" else 200,
            content_type="application/health+json",
        )

    spec = _encoder.encode(openapi.build_spec())  # built once: the Structs do not change

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        return Response(spec, 200, content_type="application/json")

    @app.get("/metrics")
    async def metrics_text() -> Response:
        svc.refresh_gauges()
        return Response(generate_latest(), 200, content_type=CONTENT_TYPE_LATEST)

    # ── admin ──────────────────────────────────────────────────────────────────────────────

    @app.post("/admin/breaker")
    async def admin_breaker() -> Response:
        require_admin()
        req = decode_body(BreakerRequest, await body(), cfg.limits.max_body_bytes)
        await svc.override_breaker(req.mode)
        return json_response({"mode": req.mode})

    @app.post("/admin/credit")
    async def admin_credit() -> Response:
        require_admin()
        req = decode_body(CreditRequest, await body(), cfg.limits.max_body_bytes)
        if not valid_address(req.address):
            raise ApiError("invalid_request", "address: expected 0x followed by 40 hex digits")
        if req.amount == 0 or abs(req.amount) > MAX_ADJUSTMENT:
            raise ApiError(
                "amount_out_of_range", f"amount must be non-zero and within ±{MAX_ADJUSTMENT}"
            )
        entry = await svc.admin_credit(req.address.lower(), req.amount, req.reason)
        return json_response({"entry": entry}, 201)

    @app.post("/admin/archive")
    async def admin_archive() -> Response:
        require_admin()
        return json_response(await svc.run_archive(), 200)

    @app.get("/admin/integrity")
    async def admin_integrity() -> Response:
        require_admin()
        violations = await svc.integrity()
        return json_response({"ok": not violations, "violations": violations})

    # ── WebSocket ──────────────────────────────────────────────────────────────────────────

    @app.websocket("/ws")
    async def ws() -> None:
        await serve_websocket(svc, websocket)

    return app


_BET_STATUSES = frozenset({"pending", "confirmed", "rejected", "won", "lost", "void"})
_PATH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)  # bet ids are "b" + 24 hex
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}", re.ASCII)  # API.md: nonce


def _shown(value: str, limit: int = 64) -> str:
    """A client's value quoted in an error message, cut short: never echoed at any size."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _prefer_wait(header: str | None) -> int:
    """`Prefer: wait=N` (RFC 7240), capped at 10 s as API.md says."""
    if not header:
        return 0
    m = _PREFER_WAIT.search(header)
    if m is None:
        return 0
    digits = m.group(1).lstrip("0")
    return 10 if len(digits) > 2 else min(10, int(digits or "0"))
