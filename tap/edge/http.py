"""What every HTTP handler of the edge shares: the services, reading a request, shaping an answer.

It decides how a request is read (the body, strictly decoded into a bounded Struct; the bearer
session or the admin token; bounded query integers and cursors; who is asking, behind a trusted
proxy) and how an answer and a refusal look on the wire (JSON, API.md's error model with its
`Retry-After` and `RateLimit-*` headers). It leaves the routes, and what each one means, to the
blueprints in `tap.edge.routes`, and the app-level hooks (request id, security headers, CORS,
metrics, the access log, error handlers) to `tap.edge.app`.

Handlers reach the process's handles through `edge()`: `create_app` puts one `Edge` in
`app.extensions`, so a handler is a plain module-level function (importable, testable with a
test app) and costs one context lookup per request, where a closure cost none.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from quart import Response, current_app, request

from tap.errors import ApiError
from tap.ratelimit import IPNetwork, KeyedLimiter, client_address, client_key
from tap.sessions import Session
from tap.wire import WireError, decode_untrusted

if TYPE_CHECKING:
    from tap.edge.health import Health
    from tap.edge.services import EdgeServices

T = TypeVar("T")

EXTENSION = "tap"  # the key of the `Edge` in `app.extensions`
MAX_CURSOR_CHARS = 128  # API.md bounds: cursors are opaque strings of at most 128 characters
# The largest integer every JSON client reads exactly (2⁵³ − 1): the bound of an operator's
# adjustment and of a price query's timestamps.
MAX_JSON_INT = 2**53 - 1
_QUERY_INT = re.compile(r"-?[0-9]{1,20}", re.ASCII)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Edge:
    """What the handlers of one app reach through `edge()`: built once by `create_app`."""

    svc: EdgeServices
    health: Health
    # Unauthenticated, each challenge may end in a signature recovery and a login claim (the claim
    # store is bounded): one client may ask only so fast.
    challenge_limiter: KeyedLimiter
    trusted_proxies: tuple[IPNetwork, ...]
    admin_token: bytes | None  # None: the admin routes answer 404


def edge() -> Edge:
    """This app's `Edge` (the one lookup a handler makes)."""
    found: Edge = current_app.extensions[EXTENSION]
    return found


# ── answers ──────────────────────────────────────────────────────────────────────────────────


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        _encoder.encode(payload), status=status, headers=headers, content_type="application/json"
    )


def error_response(err: ApiError) -> Response:
    return json_response(err.body(), err.status, error_headers(err))


def error_headers(err: ApiError) -> dict[str, str]:
    """The headers a refusal carries: `Retry-After`, and `RateLimit-*` on a 429."""
    headers: dict[str, str] = {}
    if err.code == "rate_limited" and err.limit is not None:
        headers["RateLimit-Limit"] = str(err.limit)
        headers["RateLimit-Remaining"] = "0"
        headers["RateLimit-Reset"] = str(err.retry_after_s or 1)
    if err.retry_after_s is not None or err.status in (429, 503):
        headers["Retry-After"] = str(err.retry_after_s if err.retry_after_s is not None else 1)
    return headers


def shown(value: str, limit: int = 64) -> str:
    """A client's value quoted in an error message, cut short: never echoed at any size."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


# ── reading a request ────────────────────────────────────────────────────────────────────────


async def body() -> bytes:
    """The request's body, read once and not cached (Quart caps it at `MAX_CONTENT_LENGTH`)."""
    data = await request.get_data(cache=False, as_text=False)
    return data if isinstance(data, bytes) else data.encode()


def decode_body(kind: type[T], data: bytes, max_bytes: int) -> T:
    """Untrusted bytes into a bounded Struct, or `400 invalid_request` / `413`: never another
    error. `tap.wire` checks size and nesting before msgspec runs (a library raises the recursion
    limit, so msgspec's own guard does not protect the C stack) and turns invalid UTF-8 inside a
    string — msgspec's `UnicodeDecodeError`, not a `DecodeError` — into the same refusal."""
    try:
        return decode_untrusted(data, kind, max_bytes=max_bytes)
    except WireError as e:
        raise ApiError(e.code, e.message) from None


def session_or_401(svc: EdgeServices) -> Session:
    """The session the request's `Authorization: Bearer <token>` names, or `401 unauthorized`."""
    return session_for(svc, request.headers.get("Authorization", ""))


def session_for(svc: EdgeServices, header: str) -> Session:
    """`session_or_401` for an `Authorization` header's value (`tap.edge.fastlane` reads it from
    the ASGI scope)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError("unauthorized", "Authorization: Bearer <token> required")
    session = svc.sessions.lookup(token.strip(), svc.clock.now_ms())
    if session is None:
        raise ApiError("unauthorized", "session token is unknown or expired")
    return session


def require_admin(admin_token: bytes | None) -> None:
    """`404` when no admin token is configured (the routes do not exist), `401` unless the
    request's bearer token is it."""
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
    """Query parameter `name` as an integer in `lo..hi` (absent or empty: `default`). At most
    20 ASCII digits are converted: `int()` of 5,000 digits raises; `\\d` takes any script's."""
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
    """The opaque `cursor` of a listing, bounded before the read layer sees it."""
    cursor = request.args.get("cursor") or None
    if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
        raise ApiError("invalid_request", f"cursor: at most {MAX_CURSOR_CHARS} characters")
    return cursor


def client(trusted_proxies: tuple[IPNetwork, ...]) -> str:
    """Who is asking (per-client limits): the socket peer, or the X-Forwarded-For hop a
    configured proxy vouches for."""
    forwarded = ",".join(request.headers.getlist("X-Forwarded-For")) if trusted_proxies else None
    return client_key(client_address(request.remote_addr, forwarded, trusted_proxies))
