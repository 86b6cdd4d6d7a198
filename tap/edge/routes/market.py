"""`/api/markets`, `/api/config`, `/api/grid/<symbol>`, `/api/prices/<symbol>`: public market data.

No session needed. It decides the answers' shape and the price query's bounds; the grid is the
market actor's (through `EdgeServices.grid`), the ticks the read layer's.
"""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response

from tap.edge.http import MAX_JSON_INT, edge, json_response, query_int, shown
from tap.errors import ApiError

bp = Blueprint("market", __name__)


@bp.get("/api/markets")
async def markets() -> Response:
    cfg = edge().svc.cfg
    return json_response({"markets": [msgspec.to_builtins(m) for m in cfg.markets]})


@bp.get("/api/config")
async def client_config() -> Response:
    # What a client needs before login: the chain to sign in on, and whether test funds
    # (mock deposits) exist — the web client offers its throwaway dev wallet only then.
    cfg = edge().svc.cfg
    return json_response(
        {
            "chain_id": cfg.auth.chain_id,
            "mock_deposits": cfg.payments.mock_deposits,
            "max_deposit": cfg.payments.max_deposit if cfg.payments.mock_deposits else 0,
        }
    )


@bp.get("/api/grid/<symbol>")
async def grid(symbol: str) -> Response:
    view = edge().svc.grid(symbol)
    if view is None:
        raise ApiError("not_found", f"no market {shown(symbol)} (or no price yet)")
    return json_response(view)


@bp.get("/api/prices/<symbol>")
async def prices(symbol: str) -> Response:
    svc = edge().svc
    if svc.cfg.market(symbol) is None:
        raise ApiError("not_found", f"no market {shown(symbol)}")
    now = svc.clock.now_ms()
    start = query_int("from", now - 60_000, 0, MAX_JSON_INT)
    end = query_int("to", now + 1, 0, MAX_JSON_INT)
    limit = query_int("limit", 1000, 1, 10_000)
    ticks, next_from = await svc.ticks(symbol, start, end, limit)
    return json_response({"ticks": ticks, "next": next_from})
