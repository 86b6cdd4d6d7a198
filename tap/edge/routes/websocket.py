"""`/ws`: the WebSocket endpoint. It only hands the connection to `tap.edge.ws`, which decides
everything about one client (auth, subscriptions, bets, limits, closing)."""

from __future__ import annotations

from quart import Blueprint, websocket

from tap.edge.http import edge
from tap.edge.ws import serve_websocket

bp = Blueprint("websocket", __name__)


@bp.websocket("/ws")
async def ws() -> None:
    await serve_websocket(edge().svc, websocket)
