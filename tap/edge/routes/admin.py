"""`/admin/*`: the operator's breaker override, balance adjustments, archive and integrity check.

Every route answers `404` when no admin token is configured and `401` without it. It decides the
adjustment's bounds and the answers' shape; publishing the override, posting the adjustment and
running the maintenance jobs are `EdgeServices`'.
"""

from __future__ import annotations

from quart import Blueprint, Response

from tap.admission import valid_address
from tap.edge.http import MAX_JSON_INT, body, decode_body, edge, json_response, require_admin
from tap.errors import ApiError
from tap.messages import BreakerRequest, CreditRequest

bp = Blueprint("admin", __name__)

# The largest adjustment an operator may post. Unbounded, one typo would reach SQLite as an
# integer it cannot store (the writer fails and the process with it) or sum balances past int64.
MAX_ADJUSTMENT = MAX_JSON_INT


@bp.post("/admin/breaker")
async def admin_breaker() -> Response:
    e = edge()
    require_admin(e.admin_token)
    req = decode_body(BreakerRequest, await body(), e.svc.cfg.limits.max_body_bytes)
    await e.svc.override_breaker(req.mode)
    return json_response({"mode": req.mode})


@bp.post("/admin/credit")
async def admin_credit() -> Response:
    e = edge()
    require_admin(e.admin_token)
    req = decode_body(CreditRequest, await body(), e.svc.cfg.limits.max_body_bytes)
    if not valid_address(req.address):
        raise ApiError("invalid_request", "address: expected 0x followed by 40 hex digits")
    if req.amount == 0 or abs(req.amount) > MAX_ADJUSTMENT:
        raise ApiError(
            "amount_out_of_range", f"amount must be non-zero and within ±{MAX_ADJUSTMENT}"
        )
    entry = await e.svc.admin_credit(req.address.lower(), req.amount, req.reason)
    return json_response({"entry": entry}, 201)


@bp.post("/admin/archive")
async def admin_archive() -> Response:
    e = edge()
    require_admin(e.admin_token)
    return json_response(await e.svc.run_archive(), 200)


@bp.get("/admin/integrity")
async def admin_integrity() -> Response:
    e = edge()
    require_admin(e.admin_token)
    violations = await e.svc.integrity()
    return json_response({"ok": not violations, "violations": violations})
