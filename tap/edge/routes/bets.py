"""`/api/bets`: place a bet, look one up (by id or by nonce), list a player's bets.

It decides what a bet's answer says and when: a `202` only for a bet that is durable, `201` with
the committed bet under `Prefer: wait`, the writer's refusals as API.md's errors. Admission is
the desk's (`tap.edge.desk`), the wait for the commit and the reads are `EdgeServices`'.

`POST /api/bets` is the hot route (issue 12 measures CPU per bet on it): its answer is
`bet_answer`, which the live server runs from `tap.edge.fastlane` without Quart's per-request
machinery; the Quart route below answers the same through it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from quart import Blueprint, Response, request

from tap.edge.http import (
    body,
    decode_body,
    edge,
    json_response,
    query_cursor,
    query_int,
    session_or_401,
    shown,
)
from tap.errors import STATUS, ApiError
from tap.messages import BetRequest
from tap.sessions import Session

if TYPE_CHECKING:
    from tap.edge.services import EdgeServices

bp = Blueprint("bets", __name__)

# How long a bet's request waits for its commit before answering 503 instead of a 202 that a
# crash could still undo (the writer commits within milliseconds; this is a stuck disk).
DURABLE_WAIT_S = 10
# ASCII digits only (`\d` would take any script's), as many as sent: the value is capped, not
# converted (int() of 5,000 digits raises).
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*([0-9]+)", re.IGNORECASE | re.ASCII)
_BET_STATUSES = frozenset({"pending", "confirmed", "rejected", "won", "lost", "void"})
_PATH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)  # bet ids are "b" + 24 hex
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}", re.ASCII)  # API.md: nonce


@bp.post("/api/bets")
async def place_bet() -> Response:
    """Admit a bet, wait for its commit, answer `202` (or `201` under `Prefer: wait`).

    Served by `tap.edge.fastlane` on the live server (the same `bet_answer`, without Quart's
    per-request machinery); this route is what a plain Quart app of the blueprints answers.
    """
    svc = edge().svc
    session = session_or_401(svc)
    payload, status, headers = await bet_answer(
        svc, session, await body(), request.headers.get("Prefer")
    )
    return json_response(payload, status, headers)


async def bet_answer(
    svc: EdgeServices, session: Session, data: bytes, prefer: str | None
) -> tuple[Any, int, dict[str, str]]:
    """`POST /api/bets` once its session is known: (JSON payload, status, headers), or the
    refusal raised as `ApiError`.

    A 202 is only ever sent for a bet that is durable (committed, fsync'd): a crash right after
    the answer must not lose it. So every bet waits for its batch's commit (the writer flushes
    `batcher.max_wait_ms` after the first item); `Prefer: wait` only changes what the answer
    says. A commit that does not come in `DURABLE_WAIT_S` answers `503 overloaded` with the
    bet's id: it may still land, and the client looks it up by nonce before placing it again.
    """
    cfg = svc.cfg
    req = decode_body(BetRequest, data, cfg.limits.max_body_bytes)
    bet, admit = await svc.desk.place_with_admission(session, req)
    headers: dict[str, str] = {}
    if admit.tokens_left is not None:
        # The same headers a 429 carries, so a client can pace itself before it is refused.
        headers["RateLimit-Limit"] = str(cfg.limits.burst)
        headers["RateLimit-Remaining"] = str(admit.tokens_left)
        headers["RateLimit-Reset"] = str(-(-admit.full_in_ms // 1000))
    wait_s = _prefer_wait(prefer)
    # No checkpoint since the desk queued the bet, so the commit cannot slip past the waiter.
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
        return msgspec.to_builtins(final), 201, headers
    pending = {
        "bet_id": bet.bet_id,
        "status": "pending",
        "cell_id": bet.cell_id,
        "amount": bet.amount,
        "multiplier_bps": bet.multiplier_bps,
        "nonce": bet.nonce,
        "accepted_at": bet.accepted_at,
    }
    return pending, 202, headers


@bp.get("/api/bets/<bet_id>")
async def get_bet(bet_id: str) -> Response:
    svc = edge().svc
    session = session_or_401(svc)
    # An id or nonce we could never have made is not looked up, nor echoed at any length.
    bet = await svc.bet(bet_id) if _PATH_ID.fullmatch(bet_id) else None
    if bet is None or bet.address != session.address:
        raise ApiError("not_found", f"no bet {shown(bet_id)}")
    return json_response(bet)


@bp.get("/api/bets/by-nonce/<nonce>")
async def get_bet_by_nonce(nonce: str) -> Response:
    svc = edge().svc
    session = session_or_401(svc)
    bet = await svc.bet_by_nonce(session.address, nonce) if _NONCE.fullmatch(nonce) else None
    if bet is None:
        raise ApiError("not_found", f"no bet with nonce {shown(nonce)}")
    return json_response(bet)


@bp.get("/api/bets")
async def list_bets() -> Response:
    svc = edge().svc
    session = session_or_401(svc)
    status = request.args.get("status") or None
    if status is not None and status not in _BET_STATUSES:
        raise ApiError("invalid_request", f"status: expected one of {sorted(_BET_STATUSES)}")
    limit = query_int("limit", 50, 1, 500)
    items, next_cursor = await svc.list_bets(session.address, status, limit, query_cursor())
    return json_response({"items": items, "next_cursor": next_cursor})


def _prefer_wait(header: str | None) -> int:
    """`Prefer: wait=N` (RFC 7240), capped at 10 s as API.md says."""
    if not header:
        return 0
    m = _PREFER_WAIT.search(header)
    if m is None:
        return 0
    digits = m.group(1).lstrip("0")
    return 10 if len(digits) > 2 else min(10, int(digits or "0"))
