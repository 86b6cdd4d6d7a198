"""`tap.edge.fastlane` answers `POST /api/bets` exactly as the Quart route does.

Both apps are built over one running server's services (`create_app(svc)` and
`create_app(svc, fast_lane=False)`) and driven over ASGI; every request is sent to both and the
answers compared: status, every header (the request id aside when the server made it up), and
the JSON body (a bet's own id, nonce and times aside when the two requests placed two bets).
Cases: each refusal of the contract's list that a request can reach before and after the hot
state, a 413 by Content-Length, 202 and `Prefer: wait` 201, a replay, a request id and CORS.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from prometheus_client import REGISTRY

from tap.edge.app import create_app
from tests.e2e import Player, Server, new_nonce, pick_cell, placeable_cells, serving

ORIGIN = "https://play.example"
_VARYING_HEADERS = {"x-request-id", "date"}
_BET_OWN = {"bet_id", "nonce", "accepted_at", "confirmed_at", "created_at"}


def _clients(server: Server) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    svc = server.running.services
    fast = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(svc)), base_url="http://tap.test"
    )
    slow = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(svc, fast_lane=False)),
        base_url="http://tap.test",
    )
    return fast, slow


def _shape(r: httpx.Response, *, own_bet: bool) -> dict[str, Any]:
    headers = sorted(
        (k.lower(), v) for k, v in r.headers.multi_items() if k.lower() not in _VARYING_HEADERS
    )
    body = r.json()
    if own_bet and isinstance(body, dict):
        body = {k: ("…" if k in _BET_OWN else v) for k, v in body.items()}
        if "error" in body and "bet_id" in body["error"]:
            body["error"] = {**body["error"], "bet_id": "…"}
    if isinstance(body, dict) and "error" in body and "server_time" in body["error"]:
        message = re.sub(r"[0-9]{10,}", "…", body["error"]["message"])
        body["error"] = {**body["error"], "server_time": "…", "message": message}
    return {"status": r.status_code, "headers": headers, "body": body}


async def _same(
    fast: httpx.AsyncClient,
    slow: httpx.AsyncClient,
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    *,
    own_bet: bool = False,
    unread: bool = False,
) -> dict[str, Any]:
    a, b = await send(fast), await send(slow)
    shape = _shape(a, own_bet=own_bet)
    other = _shape(b, own_bet=own_bet)
    if unread:
        other["headers"] = sorted({*other["headers"], ("connection", "close")})
    assert shape == other, (shape, other)
    if "x-request-id" in a.headers:
        assert len(a.headers["x-request-id"]) == len(b.headers["x-request-id"])
    return shape


async def test_the_fast_lane_answers_every_case_as_the_quart_route(tmp_path: Path) -> None:
    async with serving(tmp_path, server__cors_origins=[ORIGIN]) as server:
        fast, slow = _clients(server)
        player = Player(server)
        await player.login()
        await player.deposit(50_000_000)
        cell = await pick_cell(server, min_lead_ms=2_000)
        cell_id = cell["cell_id"]
        stake = server.market.min_stake
        auth = player.auth

        def post(body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Any:
            async def send(client: httpx.AsyncClient) -> httpx.Response:
                if raw is not None:
                    return await client.post("/api/bets", content=raw, headers=headers or {})
                return await client.post("/api/bets", json=body, headers=headers or {})

            return send

        signed = player.signed_bet(cell_id, stake)
        seen: list[int] = []
        # Refusals before any state: the same request to both. A refused session is answered
        # before the body is read, so the lane always says `Connection: close` (CloseUnreadBody);
        # Quart's reader task may or may not have read the body by then, so that one header is
        # compared only on the lane's side.
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"}):
            shape = await _same(fast, slow, post(signed, headers), unread=True)
            assert ("connection", "close") in shape["headers"]
            seen.append(shape["status"])
        for raw in (b"{", b"[]", b'{"cell_id": 1}', "é".encode("latin-1")):
            seen.append((await _same(fast, slow, post(None, auth, raw)))["status"])
        too_big = b"{" + b" " * server.cfg.limits.max_body_bytes + b"}"
        seen.append((await _same(fast, slow, post(None, auth, too_big)))["status"])
        for changed in (
            {"signature": "00" * 64},
            {"timestamp": signed["timestamp"] - 3_600_000},
            {"chain_id": signed["chain_id"] + 1},
        ):
            seen.append((await _same(fast, slow, post({**signed, **changed}, auth)))["status"])
        for body in (
            player.signed_bet(cell_id, 0),
            player.signed_bet("BTC-USD:1:1", stake),
            player.signed_bet(cell_id, stake, min_multiplier_bps=10**9),
            player.signed_bet(cell_id, server.market.max_stake * 10),
        ):
            seen.append((await _same(fast, slow, post(body, auth)))["status"])
        assert seen == [401, 401, 401, 400, 400, 400, 400, 413, 401, 401, 401, 400, 422, 400, 422]

        # Bets: each app places its own (one per cell per player: two players, one cell each).
        other = Player(server)
        await other.login()
        await other.deposit(50_000_000)
        bodies = {
            "fast": player.signed_bet(cell_id, stake),
            "slow": other.signed_bet(cell_id, stake),
        }
        headers = {
            "fast": {**player.auth, "X-Request-ID": "req-1", "Origin": ORIGIN},
            "slow": {**other.auth, "X-Request-ID": "req-1", "Origin": ORIGIN},
        }
        counted = [
            _sample("tap_http_requests_total", route="/api/bets", method="POST", status="202")
        ]
        timed = [_sample("tap_http_request_duration_seconds_count", route="/api/bets")]
        refused = [_sample("tap_bets_total", status="refused", reason="replayed_nonce")]
        placed = []
        for k, c in (("fast", fast), ("slow", slow)):
            placed.append(await c.post("/api/bets", json=bodies[k], headers=headers[k]))
            counted.append(
                _sample("tap_http_requests_total", route="/api/bets", method="POST", status="202")
            )
            timed.append(_sample("tap_http_request_duration_seconds_count", route="/api/bets"))
        assert [r.status_code for r in placed] == [202, 202]
        # Each answer is counted and timed once, under the route's rule, by either lane.
        assert counted[1] - counted[0] == counted[2] - counted[1] == 1
        assert timed[1] - timed[0] == timed[2] - timed[1] == 1
        assert _shape(placed[0], own_bet=True) == _shape(placed[1], own_bet=True)
        assert placed[0].headers["x-request-id"] == "req-1"
        assert placed[0].headers["access-control-allow-origin"] == ORIGIN
        assert "ratelimit-remaining" in placed[0].headers
        # The same nonce again: a replay, answered with the bet's id.
        replays = [
            await c.post("/api/bets", json=bodies[k], headers=headers[k])
            for k, c in (("fast", fast), ("slow", slow))
        ]
        assert [r.status_code for r in replays] == [409, 409]
        assert (
            _sample("tap_bets_total", status="refused", reason="replayed_nonce") == refused[0] + 2
        )
        assert _shape(replays[0], own_bet=True) == _shape(replays[1], own_bet=True)
        assert replays[0].json()["error"]["bet_id"] == placed[0].json()["bet_id"]
        # A second bet on the same cell: refused by the hot state.
        again = [
            await c.post(
                "/api/bets",
                json={**bodies[k], **_resigned(p, bodies[k])},
                headers=headers[k],
            )
            for k, c, p in (("fast", fast, player), ("slow", slow, other))
        ]
        assert [r.status_code for r in again] == [409, 409]
        assert _shape(again[0], own_bet=True) == _shape(again[1], own_bet=True)
        # Prefer: wait → 201 with the committed bet.
        third = next(
            c["cell_id"]
            for c in placeable_cells(await server.grid(), after_ts=cell["t_start"] - 1)
            if c["cell_id"] != cell_id
        )
        waited = [
            await c.post(
                "/api/bets",
                json=p.signed_bet(third, stake),
                headers={**p.auth, "Prefer": "wait=5"},
            )
            for c, p in ((fast, player), (slow, other))
        ]
        assert [r.status_code for r in waited] == [201, 201]
        assert (
            _shape(waited[0], own_bet=True)["headers"] == _shape(waited[1], own_bet=True)["headers"]
        )
        assert set(waited[0].json()) == set(waited[1].json())
        assert waited[0].headers["preference-applied"] == "wait=5"
        await fast.aclose()
        await slow.aclose()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _resigned(player: Player, body: dict[str, Any]) -> dict[str, Any]:
    """The same bet with a new nonce (and its signature)."""
    fresh = player.signed_bet(body["cell_id"], body["amount"], new_nonce())
    return {
        "nonce": fresh["nonce"],
        "signature": fresh["signature"],
        "timestamp": fresh["timestamp"],
    }


async def _lane_answer(
    server: Server, scope_headers: list[tuple[bytes, bytes]], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What the lane sends for one request whose body arrives as `events` (then nothing)."""
    from tap.edge import app as edge_app
    from tap.edge.fastlane import BetFastLane

    async def not_here(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the lane passed its own route on")

    lane = BetFastLane(
        not_here,
        server.running.services,
        request_id_ok=lambda rid: edge_app._REQUEST_ID.match(rid) is not None,
        security_headers=edge_app._SECURITY_HEADER_LIST,
        cors_headers=edge_app.CORS_HEADERS,
        cors_origins=set(),
    )
    pending = list(events)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/bets", "headers": scope_headers}
    await lane(scope, receive, send)
    return sent


def _status_and_body(sent: list[dict[str, Any]]) -> tuple[int, Any]:
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    return sent[0]["status"], msgspec.json.decode(sent[1]["body"])


async def test_the_lane_s_own_edges_oversize_timeout_disconnect_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path) as server:
        player = Player(server)
        await player.login()
        auth = [(b"authorization", f"Bearer {player.token}".encode())]
        limit = server.cfg.limits.max_body_bytes
        # A Content-Length of thousands of digits is a 413, not an int() error.
        sent = await _lane_answer(server, [(b"content-length", b"9" * 5000), *auth], [])
        assert _status_and_body(sent)[0] == 413
        # A chunked body that grows past the limit: 413 as soon as it does.
        chunk = {"type": "http.request", "body": b" " * (limit // 2 + 1), "more_body": True}
        sent = await _lane_answer(server, auth, [chunk, chunk, chunk])
        status, body = _status_and_body(sent)
        assert (status, body["error"]["code"]) == (413, "payload_too_large")
        # A client that hangs up before its body is complete is not answered.
        gone = [chunk, {"type": "http.disconnect"}]
        assert await _lane_answer(server, auth, gone) == []
        # A body that never completes: 408 after the body timeout (Quart's, 60 s; here short).
        monkeypatch.setattr("tap.edge.fastlane.BODY_TIMEOUT_S", 0.05)
        status, body = _status_and_body(await _lane_answer(server, auth, [chunk]))
        assert (status, body["error"]["code"]) == (408, "invalid_request")

        # An error nobody meant: 500 with the request id, logged.
        async def broken(*args: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr("tap.edge.fastlane.bet_answer", broken)
        whole = [{"type": "http.request", "body": b"{}", "more_body": False}]
        sent = await _lane_answer(server, [*auth, (b"x-request-id", b"rid-42")], whole)
        status, body = _status_and_body(sent)
        assert status == 500
        assert body == {
            "error": {"code": "internal_error", "message": "internal error", "request_id": "rid-42"}
        }
        assert (b"x-request-id", b"rid-42") in sent[0]["headers"]


async def test_clients_hanging_up_mid_body_or_mid_commit_cost_nobody_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over real sockets: 40 bets sent whole and the socket closed at once (the lane answers into
    a closed connection), 20 bodies cut short. Nothing is logged as an error, the first bet is
    stored as it would be, and the next player's bet is answered as usual."""
    async with serving(tmp_path, within=60) as server:
        player = Player(server)
        await player.login()
        await player.deposit(50_000_000)
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        cell = await pick_cell(server, min_lead_ms=2_000)
        head = f"POST /api/bets HTTP/1.1\r\nHost: tap\r\nAuthorization: Bearer {player.token}\r\n"
        for _ in range(40):
            body = msgspec.json.encode(player.signed_bet(cell["cell_id"], server.market.min_stake))
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await stream.aclose()
        for _ in range(20):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(f"{head}Content-Length: 100\r\n\r\n{{".encode())
            await stream.aclose()
        await trio.sleep(0.5)
        other = Player(server)
        await other.login()
        await other.deposit(50_000_000)
        r = await other.place(cell_id=cell["cell_id"], amount=server.market.min_stake)
        assert r.status_code == 202, r.text
        mine = (await player.get("/api/bets")).json()["items"]
        # The 40 share one cell: the first is the player's bet, the rest duplicates of it.
        assert [b["status"] for b in mine] == ["confirmed"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
