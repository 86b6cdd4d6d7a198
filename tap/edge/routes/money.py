"""`/api/balance`, `/api/deposits`, `/api/withdrawals`, `/api/ledger`: a player's money.

It decides the routes' bounds (mock deposits on or off, the deposit cap) and the answers' shape;
posting to the ledger and waiting for the commit, the withdrawal's signature and hold, are
`EdgeServices`'.
"""

from __future__ import annotations

from quart import Blueprint, Response

from tap.edge.http import (
    body,
    decode_body,
    edge,
    json_response,
    query_cursor,
    query_int,
    session_or_401,
)
from tap.errors import ApiError
from tap.messages import DepositRequest, WithdrawalRequest

bp = Blueprint("money", __name__)


@bp.get("/api/balance")
async def balance() -> Response:
    svc = edge().svc
    session = session_or_401(svc)
    available, locked = await svc.balance(session.address)
    return json_response(
        {
            "address": session.address,
            "available": available,
            "locked": locked,
            "as_of": svc.clock.now_ms(),
        }
    )


@bp.post("/api/deposits")
async def deposit() -> Response:
    svc = edge().svc
    cfg = svc.cfg
    session = session_or_401(svc)
    if not cfg.payments.mock_deposits:
        raise ApiError("not_found", "deposits are not enabled on this server")
    req = decode_body(DepositRequest, await body(), cfg.limits.max_body_bytes)
    if not 0 < req.amount <= cfg.payments.max_deposit:
        raise ApiError(
            "amount_out_of_range", f"amount must be within 1..{cfg.payments.max_deposit}"
        )
    entry = await svc.deposit(session.address, req.amount)
    return json_response({"entry": entry}, 201)


@bp.post("/api/withdrawals")
async def withdraw() -> Response:
    svc = edge().svc
    session = session_or_401(svc)
    req = decode_body(WithdrawalRequest, await body(), svc.cfg.limits.max_body_bytes)
    entry = await svc.withdraw(session, req)
    return json_response({"entry": entry}, 201)


@bp.get("/api/ledger")
async def ledger() -> Response:
    svc = edge().svc
    session = session_or_401(svc)
    limit = query_int("limit", 50, 1, 500)
    items, next_cursor = await svc.ledger(session.address, limit, query_cursor())
    return json_response({"items": items, "next_cursor": next_cursor})
