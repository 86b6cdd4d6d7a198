"""The edge's HTTP and WebSocket routes, one Quart blueprint per concern.

Each module is one room of API.md: `auth` (challenge, login), `bets` (place, look up, list),
`money` (balance, deposits, withdrawals, the ledger), `market` (markets, client config, grid,
prices), `ops` (probes, metrics, the OpenAPI document), `admin` (breaker override, credit,
archive, integrity) and `websocket` (`/ws`). A handler is a module-level function: it reads the
request with `tap.edge.http`, reaches the process's handles through its one `edge()` lookup, and
answers; it decides nothing a service or a core module decides. Each route is declared with its
full path (no `url_prefix`), so the URL rule — the label of `tap_http_requests_total` and of
the access log's `route` — is the string written here, and `tests/test_openapi.py` reads the
route table from these files.

The app-level concerns (the request id, security headers, CORS, metrics, error handlers) are
`tap.edge.app`'s, which registers `BLUEPRINTS`.
"""

from __future__ import annotations

from quart import Blueprint

from tap.edge.routes import admin, auth, bets, market, money, ops, websocket

BLUEPRINTS: tuple[Blueprint, ...] = (
    auth.bp,
    bets.bp,
    money.bp,
    market.bp,
    ops.bp,
    admin.bp,
    websocket.bp,
)
