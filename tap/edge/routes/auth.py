"""`POST /api/auth/challenge` and `POST /api/auth/login`: a SIWE challenge, then a session.

It decides the per-client pace of challenges and the answers' shape; checking the signed message
and issuing the session is the session book's (`tap.sessions`, through `EdgeServices.login`).
"""

from __future__ import annotations

from quart import Blueprint, Response

from tap import siwe
from tap.admission import valid_address
from tap.edge.http import body, client, decode_body, edge, json_response
from tap.errors import ApiError
from tap.messages import ChallengeRequest, LoginRequest

bp = Blueprint("auth", __name__)


@bp.post("/api/auth/challenge")
async def challenge() -> Response:
    """A nonce to sign, with the domain, URI and chain the message must name. Unauthenticated,
    and each challenge may end in a signature recovery and a login claim (the claim store is
    bounded): one client may ask only so fast (`limits.challenge_rate_per_s`, `429` past it)."""
    e = edge()
    svc, cfg = e.svc, e.svc.cfg
    wait_ms = e.challenge_limiter.take(client(e.trusted_proxies), svc.clock.now_ms())
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


@bp.post("/api/auth/login")
async def login() -> Response:
    svc = edge().svc
    req = decode_body(LoginRequest, await body(), svc.cfg.limits.max_body_bytes)
    session = await svc.login(req.message, req.signature, svc.clock.now_ms())
    return json_response(
        {
            "token": session.token,
            "address": session.address,
            "session_key": session.session_key,
            "expires_at": session.expires_at,
        }
    )
