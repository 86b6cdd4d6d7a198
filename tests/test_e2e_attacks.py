"""Attacks and abuse against the real server: replays, forgeries, bad cells and amounts, floods,
garbage over HTTP and WebSocket. Every refusal has API.md's code and status, nothing answers 5xx,
and the server keeps serving everyone else.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from eth_account import Account
from nacl.signing import SigningKey
from prometheus_client import REGISTRY

from tests.e2e import (
    Player,
    Server,
    connect_ws,
    new_nonce,
    pick_cell,
    placeable_cells,
    serving,
    wait_until,
)

STAKE = 1_000_000


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    code: str = body["error"]["code"]
    return code


async def funded(server: Server, amount: int = 100_000_000) -> Player:
    player = server.player()
    await player.login()
    await player.deposit(amount)
    return player


async def open_cells(server: Server, lead_ms: int = 5000) -> list[dict[str, Any]]:
    """Placeable cells that stay placeable for several seconds more (1 s columns)."""
    return placeable_cells(await server.grid(), after_ts=server.now() + lead_ms)


# ── replay ────────────────────────────────────────────────────────────────────────────────────


async def test_a_replayed_bet_is_refused_with_the_original_bet_id(server: Server) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    body = player.signed_bet(cell["cell_id"], STAKE)
    first = await player.place(body)
    assert first.status_code == 202, first.text
    for _ in range(2):
        again = await player.place(body)
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "replayed_nonce"
        assert again.json()["error"]["bet_id"] == first.json()["bet_id"]
    # The same nonce on a different cell is the same idempotency key: refused too.
    other = (await open_cells(server))[1]
    r = await player.place(cell_id=other["cell_id"], amount=STAKE, nonce=body["nonce"])
    assert r.status_code == 409 and error_of(r) == "replayed_nonce"
    # …and it also holds once the first one is committed.
    r = await player.place(body, wait=5)
    assert r.status_code == 409 and error_of(r) == "replayed_nonce"
    assert (await player.balance())["locked"] == STAKE


async def test_a_hundred_concurrent_copies_of_one_bet_admit_exactly_one(tmp_path: Path) -> None:
    async with serving(tmp_path, limits__burst=1000, limits__rate_per_s=1000.0) as server:
        player = await funded(server)
        cell = await pick_cell(server, min_lead_ms=5000)
        body = player.signed_bet(cell["cell_id"], STAKE)
        client = server.http(limits=httpx.Limits(max_connections=100))
        answers: list[httpx.Response] = []

        async def one() -> None:
            answers.append(await player.place(body, client=client))

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
        statuses = Counter(r.status_code for r in answers)
        assert statuses == {202: 1, 409: 99}, statuses
        bet_id = next(r.json()["bet_id"] for r in answers if r.status_code == 202)
        for r in answers:
            if r.status_code == 409:
                assert r.json()["error"] == {
                    "code": "replayed_nonce",
                    "message": "nonce already used",
                    "bet_id": bet_id,
                }
        await wait_until_balance(player, locked=STAKE)


async def wait_until_balance(player: Player, **expected: int) -> dict[str, Any]:
    with trio.fail_after(5):
        while True:
            balance = await player.balance()
            if all(balance[k] == v for k, v in expected.items()):
                return balance
            await trio.sleep(0.01)


# ── signatures, timestamps, chain ─────────────────────────────────────────────────────────────


async def test_stale_future_and_wrong_chain_requests_are_refused(server: Server) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    skew = server.cfg.auth.max_skew_ms
    for ts in (server.now() - skew - 1000, server.now() + skew + 1000):
        r = await player.place(cell_id=cell["cell_id"], amount=STAKE, timestamp=ts)
        assert r.status_code == 401 and error_of(r) == "stale_timestamp", r.text
    r = await player.place(cell_id=cell["cell_id"], amount=STAKE, chain_id=1)
    assert r.status_code == 401 and error_of(r) == "wrong_chain", r.text
    # None of those burned anything: the same cell still takes a bet.
    r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
    assert r.status_code == 202, r.text


async def test_every_tampered_field_fails_and_burns_nothing(server: Server) -> None:
    player = await funded(server)
    cells = await open_cells(server)
    body = player.signed_bet(cells[0]["cell_id"], STAKE, min_multiplier_bps=0)
    tampered: dict[str, Any] = {
        "cell_id": cells[1]["cell_id"],
        "amount": STAKE + 1,
        "nonce": new_nonce(),
        "timestamp": body["timestamp"] + 1,
        "min_multiplier_bps": 1,
        "signature": ("1" if body["signature"][0] != "1" else "2") + body["signature"][1:],
    }
    for name, value in tampered.items():
        r = await player.place({**body, name: value})
        assert r.status_code == 401, (name, r.text)
        assert error_of(r) == "bad_signature", (name, r.text)
    r = await player.place({**body, "chain_id": body["chain_id"] + 1})
    assert r.status_code == 401 and error_of(r) == "wrong_chain"  # checked before the signature
    # The genuine request still goes through: forgeries burned neither nonce nor cell.
    r = await player.place(body)
    assert r.status_code == 202, r.text


async def test_a_bet_signed_by_another_sessions_key_is_refused(server: Server) -> None:
    alice, bob = await funded(server), await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    # Bob's key over Alice's address, sent with Alice's token.
    forged = alice.signed_bet(cell["cell_id"], STAKE, key=bob.session_key)
    r = await alice.place(forged)
    assert r.status_code == 401 and error_of(r) == "bad_signature"
    # Bob's genuine bet replayed with Alice's token: it signs Bob's address, not hers.
    r = await alice.place(bob.signed_bet(cell["cell_id"], STAKE))
    assert r.status_code == 401 and error_of(r) == "bad_signature"
    # A key nobody registered.
    r = await alice.place(alice.signed_bet(cell["cell_id"], STAKE, key=SigningKey.generate()))
    assert r.status_code == 401 and error_of(r) == "bad_signature"
    assert (await alice.balance())["locked"] == 0


# ── cells, amounts, quotes ────────────────────────────────────────────────────────────────────


async def test_locked_far_unknown_and_malformed_cells_are_not_placeable(server: Server) -> None:
    player = await funded(server)
    grid = await server.grid()
    m = server.market
    now_col = server.now() // m.column_ms
    row = grid["price"] // m.row_height
    refused = [
        f"{m.symbol}:{now_col}:{row}",  # the current column
        f"{m.symbol}:{now_col + m.lockout_columns}:{row}",  # the lockout column
        f"{m.symbol}:{now_col + m.columns_ahead + 5}:{row}",  # too far ahead
        f"{m.symbol}:{now_col + 4}:{row + 10 * m.rows}",  # a row off the grid
        f"ETH-USD:{now_col + 4}:{row}",  # no such market
        "BTC-USD:not-a-column:1",
        "garbage",
    ]
    for cell_id in refused:
        r = await player.place(cell_id=cell_id, amount=STAKE)
        assert r.status_code == 422, (cell_id, r.text)
        assert error_of(r) == "cell_not_placeable", (cell_id, r.text)


async def test_amounts_outside_the_stake_limits_are_refused(server: Server) -> None:
    player = await funded(server, 1_000_000_000)
    cell = await pick_cell(server, min_lead_ms=5000)
    m = server.market
    for amount in (m.min_stake - 1, m.max_stake + 1):
        r = await player.place(cell_id=cell["cell_id"], amount=amount)
        assert r.status_code == 422, (amount, r.text)
        assert error_of(r) == "amount_out_of_range"
    for amount in (0, -STAKE, 2**53):  # outside the wire bounds (API.md): refused at decoding
        r = await player.place(cell_id=cell["cell_id"], amount=amount)
        assert r.status_code == 400 and error_of(r) == "invalid_request", (amount, r.text)
        assert "amount" in r.json()["error"]["message"]
    r = await player.place(cell_id=cell["cell_id"], amount=m.max_stake, wait=5)
    assert r.status_code == 201, r.text


async def test_a_minimum_multiplier_above_the_quote_is_refused(server: Server) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    r = await player.place(
        cell_id=cell["cell_id"], amount=STAKE, min_multiplier_bps=server.market.max_multiplier_bps
    )
    assert r.status_code == 422 and error_of(r) == "multiplier_below_minimum", r.text
    assert r.json()["error"]["multiplier_bps"] < server.market.max_multiplier_bps
    r = await player.place(cell_id=cell["cell_id"], amount=STAKE, min_multiplier_bps=10_000)
    assert r.status_code == 202, r.text


async def test_insufficient_funds_and_duplicate_cell(server: Server) -> None:
    player = await funded(server, 3 * STAKE)
    cells = await open_cells(server)
    r = await player.place(cell_id=cells[0]["cell_id"], amount=2 * STAKE)
    assert r.status_code == 202
    r = await player.place(cell_id=cells[0]["cell_id"], amount=STAKE)
    assert r.status_code == 409 and error_of(r) == "duplicate_cell_bet"
    r = await player.place(cell_id=cells[1]["cell_id"], amount=2 * STAKE)
    assert r.status_code == 422 and error_of(r) == "insufficient_funds"
    r = await player.place(cell_id=cells[1]["cell_id"], amount=STAKE)
    assert r.status_code == 202


# ── floods ────────────────────────────────────────────────────────────────────────────────────


async def test_a_thousand_concurrent_bets_on_an_account_funded_for_k_stakes_confirm_exactly_k(
    tmp_path: Path,
) -> None:
    k = 7
    async with serving(
        tmp_path,
        within=60,
        limits__burst=10_000,
        limits__rate_per_s=10_000.0,
        markets__0__column_ms=5000,
        markets__0__rows=64,
        markets__0__columns_ahead=22,
    ) as server:
        player = await funded(server, k * STAKE)
        cells = placeable_cells(await server.grid(), after_ts=server.now() + 11_000)
        assert len(cells) >= 1000, len(cells)
        bodies = iter([player.signed_bet(c["cell_id"], STAKE) for c in cells[:1000]])
        answers: list[httpx.Response] = []

        async def sender(client: httpx.AsyncClient) -> None:
            for body in bodies:
                answers.append(await player.place(body, client=client))

        # 50 requests in flight at every moment until all 1,000 are answered (5 connection pools
        # of 10: httpcore's pool bookkeeping is quadratic in queued requests, so the client
        # would otherwise be the bottleneck, not the server).
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                client = server.http(limits=httpx.Limits(max_connections=10))
                for _ in range(10):
                    nursery.start_soon(sender, client)
        assert len(answers) == 1000
        statuses = Counter((r.status_code, r.json().get("error", {}).get("code")) for r in answers)
        assert statuses == {(202, None): k, (422, "insufficient_funds"): 1000 - k}, statuses
        await wait_until_balance(player, available=0, locked=k * STAKE)
        r = await player.get("/api/bets", status="confirmed", limit=500)
        assert len(r.json()["items"]) == k
        r = await player.get("/api/bets", status="rejected", limit=500)
        assert r.json()["items"] == []
        stakes = [e for e in await player.ledger() if e["kind"] == "stake"]
        assert len(stakes) == k


async def test_the_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, limits__burst=3, limits__rate_per_s=0.2) as server:
        player = await funded(server)
        cells = await open_cells(server)
        # Forgeries cost the victim nothing: they never reach the rate limiter.
        for cell in cells[:10]:
            forged = player.signed_bet(cell["cell_id"], STAKE, key=SigningKey.generate())
            r = await player.place(forged)
            assert r.status_code == 401
        for cell in cells[:3]:
            r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
            assert r.status_code == 202, r.text
        r = await player.place(cell_id=cells[3]["cell_id"], amount=STAKE)
        assert r.status_code == 429, r.text
        assert error_of(r) == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["RateLimit-Limit"] == "3"
        assert r.headers["RateLimit-Remaining"] == "0"
        assert int(r.headers["RateLimit-Reset"]) >= 1
        # Another player is not limited by this one.
        other = await funded(server)
        r = await other.place(cell_id=cells[3]["cell_id"], amount=STAKE)
        assert r.status_code == 202, r.text


async def test_an_open_breaker_refuses_bets_with_503_and_retry_after(server: Server) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    await server.set_breaker("open")
    r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
    assert r.status_code == 503 and error_of(r) == "breaker_open", r.text
    assert int(r.headers["Retry-After"]) >= 1
    grid = await server.grid()
    assert grid["breaker"] == "open"
    assert not any(c["placeable"] for c in grid["cells"])
    await server.set_breaker("closed")
    r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
    assert r.status_code == 202, r.text


async def test_a_full_writer_queue_answers_503_overloaded_and_undoes_the_hold(
    tmp_path: Path,
) -> None:
    async with serving(
        tmp_path, batcher__queue_size=1, batcher__busy_retries=100_000, batcher__busy_timeout_ms=20
    ) as server:
        player = await funded(server, 3 * STAKE)
        cells = await open_cells(server, lead_ms=4000)
        svc = server.running.services
        await wait_until(lambda: svc.writer_depth()[0] == 0)
        # Another process holds the write lock: the writer takes one bet and waits on the lock.
        blocker = sqlite3.connect(server.db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        answers: dict[str, int] = {}

        async def place(name: str, cell: dict[str, Any]) -> None:
            # A 202 follows the commit (durable answers only), so these wait for the lock.
            answers[name] = (await player.place(cell_id=cell["cell_id"], amount=STAKE)).status_code

        try:
            async with trio.open_nursery() as nursery:
                retries = REGISTRY.get_sample_value("tap_batch_retries_total") or 0.0
                nursery.start_soon(place, "first", cells[0])
                # The writer took it and is retrying the lock: its batch is closed.
                await wait_until(
                    lambda: (REGISTRY.get_sample_value("tap_batch_retries_total") or 0.0) > retries
                )
                assert svc.writer_depth()[0] == 0
                nursery.start_soon(place, "second", cells[1])
                await wait_until(
                    lambda: svc.writer_depth()[0] == 1
                )  # queued: the channel holds one
                third_body = player.signed_bet(cells[2]["cell_id"], STAKE)
                third = await player.place(third_body)
                assert third.status_code == 503, third.text
                assert error_of(third) == "overloaded"
                assert int(third.headers["Retry-After"]) >= 1
                health = (await server.http().get("/healthz")).json()
                assert health["checks"]["batcher"] == {
                    "status": "warn",  # more than half full
                    "queue_depth": 1,
                    "capacity": 1,
                }
                assert answers == {}  # nothing answered 202 while nothing was committed
                blocker.rollback()
        finally:
            if blocker.in_transaction:
                blocker.rollback()
            blocker.close()
        assert answers == {"first": 202, "second": 202}
        await wait_until_balance(player, available=STAKE, locked=2 * STAKE)
        # The refused bet's hold and nonce were given back: the very same request now passes.
        r = await player.place(third_body, wait=5)
        assert r.status_code == 201, r.text
        await wait_until_balance(player, available=0, locked=3 * STAKE)


# ── garbage over HTTP ─────────────────────────────────────────────────────────────────────────


async def test_malformed_bodies_answer_400_naming_the_field_and_never_5xx(server: Server) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    good = player.signed_bet(cell["cell_id"], STAKE)
    headers = {**player.auth, "Content-Type": "application/json"}
    answers: list[httpx.Response] = []

    async def post(path: str, content: bytes, hdrs: dict[str, str] | None = None) -> httpx.Response:
        r = await player.http.post(path, content=content, headers=hdrs or headers)
        answers.append(r)
        return r

    r = await post("/api/bets", b"{not json")
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    r = await post("/api/bets", b"")
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    r = await post("/api/bets", b"[1, 2, 3]")
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    r = await post("/api/bets", json.dumps({**good, "sneaky": 1}).encode())
    assert r.status_code == 400 and "sneaky" in r.json()["error"]["message"]
    r = await post("/api/bets", json.dumps({**good, "amount": str(STAKE)}).encode())
    assert r.status_code == 400 and "amount" in r.json()["error"]["message"]
    r = await post("/api/bets", json.dumps({**good, "amount": 1.5}).encode())
    assert r.status_code == 400 and "amount" in r.json()["error"]["message"]
    missing = {k: v for k, v in good.items() if k != "nonce"}
    r = await post("/api/bets", json.dumps(missing).encode())
    assert r.status_code == 400 and "nonce" in r.json()["error"]["message"]
    r = await post("/api/bets", json.dumps({**good, "nonce": "short"}).encode())
    assert r.status_code == 400 and "nonce" in r.json()["error"]["message"]
    huge = player.signed_bet(cell["cell_id"], 10**30)
    r = await post("/api/bets", json.dumps(huge).encode())
    assert r.status_code in (400, 422), r.text
    r = await post("/api/deposits", b'{"amount": 1000000000000000000000000000000}')
    assert r.status_code in (400, 422), r.text
    huge = player.signed_withdrawal(10**30)
    r = await post("/api/withdrawals", json.dumps(huge).encode())
    assert r.status_code in (400, 422), r.text
    r = await post("/api/deposits", b'{"amount": "lots"}')
    assert r.status_code == 400 and "amount" in r.json()["error"]["message"]
    r = await post("/api/withdrawals", b'{"amount": 1}')
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    r = await post("/api/auth/challenge", b'{"address": "0x1234"}')
    assert r.status_code == 400 and "address" in r.json()["error"]["message"]
    r = await post("/api/auth/login", b'{"message": 5, "signature": "0x"}')
    assert r.status_code == 400 and "message" in r.json()["error"]["message"]
    r = await post("/api/auth/login", b'{"message": "hello", "signature": "0x00"}')
    assert r.status_code in (400, 401)

    # Bodies over the limit: 413, with or without a Content-Length.
    r = await post("/api/bets", b"x" * 20_000)
    assert r.status_code == 413 and error_of(r) == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 1000

    r = await player.http.post("/api/bets", content=chunks(), headers=headers)
    answers.append(r)
    assert r.status_code == 413 and error_of(r) == "payload_too_large", r.text

    # Unauthenticated: no header, another scheme, an unknown token.
    for auth in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"}):
        for method, path in (
            ("POST", "/api/bets"),
            ("GET", "/api/balance"),
            ("GET", "/api/ledger"),
            ("GET", "/api/bets"),
            ("POST", "/api/deposits"),
            ("POST", "/api/withdrawals"),
        ):
            r = await player.http.request(method, path, json=good, headers=auth)
            answers.append(r)
            assert r.status_code == 401, (method, path, auth)
            assert error_of(r) == "unauthorized"
    # Odd routes and methods.
    for method, path in (("GET", "/nope"), ("DELETE", "/api/bets"), ("PUT", "/api/balance")):
        r = await player.http.request(method, path, headers=player.auth)
        answers.append(r)
        assert r.status_code in (404, 405), (method, path, r.status_code)
        error_of(r)
    r = await player.get("/api/bets", limit="lots")
    answers.append(r)
    assert r.status_code == 400 and "limit" in r.json()["error"]["message"]
    r = await player.get("/api/bets", cursor="%%%garbage")
    answers.append(r)
    assert r.status_code == 400, r.text
    r = await player.get("/api/ledger", cursor="zzz")
    answers.append(r)
    assert r.status_code == 400, r.text
    r = await player.get("/api/bets", status="winning")
    answers.append(r)
    assert r.status_code == 400, r.text
    assert all(a.status_code < 500 for a in answers), [a.status_code for a in answers]
    for a in answers:
        assert "X-Request-ID" in a.headers
    r = await player.place(good)
    assert r.status_code == 202, r.text


# ── login ─────────────────────────────────────────────────────────────────────────────────────


async def test_login_refusals(server: Server) -> None:
    player = server.player()

    async def refused(message: str, signature: str, code: str) -> None:
        r = await player.post_login(message, signature)
        assert r.status_code == 401, (code, r.text)
        assert error_of(r) == code, r.text

    challenge = await player.challenge()
    message = player.login_message(challenge)
    # Signed by someone else: recovers to another address.
    await refused(message, player.sign_message(message, Account.create()), "bad_signature")
    await refused(message, "0x" + "00" * 65, "bad_signature")
    await refused(message, "0x" + "ab" * 65, "bad_signature")
    # Not meant for this server, or out of date (none of these spends the challenge).
    for changes, code in (
        ({"domain": "evil.example"}, "wrong_domain"),
        ({"uri": "https://evil.example"}, "wrong_domain"),
        ({"chain_id": 1}, "wrong_chain"),
        ({"expiration_ms": server.now() - 1000}, "expired"),
    ):
        other = player.login_message(challenge, **changes)
        await refused(other, player.sign_message(other), code)
    # A nonce the server never issued, and one issued to another address.
    invented = player.login_message(challenge, nonce="f" * 32)
    await refused(invented, player.sign_message(invented), "unknown_nonce")
    thief = server.player()
    stolen = thief.login_message(challenge)
    await refused(stolen, thief.sign_message(stolen), "unknown_nonce")
    # The genuine login works once; the same signed message again is a replay.
    challenge = await player.challenge()
    message = player.login_message(challenge)
    signature = player.sign_message(message)
    r = await player.post_login(message, signature)
    assert r.status_code == 200, r.text
    await refused(message, signature, "unknown_nonce")


# ── WebSocket ─────────────────────────────────────────────────────────────────────────────────


async def test_ws_place_bet_is_acked_before_it_is_confirmed(server: Server) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    async with player.ws() as ws:
        await ws.subscribe("account")
        body = player.signed_bet(cell["cell_id"], STAKE)
        await ws.send({"type": "place_bet", "req_id": "r1", **body})
        frames: list[dict[str, Any]] = []
        with trio.fail_after(5):
            while not any(f["type"] == "bet_confirmed" for f in frames):
                frames.append(json.loads(await ws.ws.get_message()))
        kinds = [f["type"] for f in frames if f["type"] in ("bet_ack", "bet_confirmed")]
        assert kinds == ["bet_ack", "bet_confirmed"]
        ack = next(f for f in frames if f["type"] == "bet_ack")
        assert ack["req_id"] == "r1"
        assert ack["bet"]["status"] == "pending"
        confirmed = next(f for f in frames if f["type"] == "bet_confirmed")
        assert confirmed["bet"]["bet_id"] == ack["bet"]["bet_id"]
        # The same bet again over WS: the same refusal as over HTTP.
        await ws.send({"type": "place_bet", "req_id": "r2", **body})
        error = await ws.next_of_type("error", where=lambda f: f["req_id"] == "r2")
        assert error["error"]["code"] == "replayed_nonce"
        pong = await ws.ping()
        assert pong == {"type": "pong", "req_id": pong["req_id"]}
        await ws.send({"type": "ping"})
        assert (await ws.next_of_type("pong")) == {"type": "pong", "req_id": None}


async def test_ws_place_bet_with_ack_commit_gets_one_answer_after_the_commit(
    server: Server,
) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    async with player.ws() as ws:
        await ws.subscribe("account")
        body = player.signed_bet(cell["cell_id"], STAKE)
        await ws.send({"type": "place_bet", "req_id": "c1", "ack": "commit", **body})
        confirmed = await ws.next_of_type("bet_confirmed")
        assert confirmed["req_id"] == "c1"
        assert confirmed["bet"]["status"] == "confirmed"
        assert confirmed["bet"]["nonce"] == body["nonce"]
        # the balance after this bet travels in the frame; no bet_ack, no second frame for it
        balance = await player.balance()
        assert confirmed["balance"] == {
            "available": balance["available"],
            "locked": balance["locked"],
        }
        pong = await ws.ping()
        assert pong["type"] == "pong"
        assert ws.frames_of(["bet_ack", "bet_confirmed", "balance"]) == []
        # refused before the writer: an `error` with the req_id, as without ack
        await ws.send({"type": "place_bet", "req_id": "c2", "ack": "commit", **body})
        error = await ws.next_of_type("error", where=lambda f: f["req_id"] == "c2")
        assert error["error"]["code"] == "replayed_nonce"
        # admission refuses a second bet on the cell before the writer: an `error` again (a
        # writer's refusal, `bet_rejected` with the req_id, is pinned in tests/test_hub.py)
        again = player.signed_bet(cell["cell_id"], STAKE)
        await ws.send({"type": "place_bet", "req_id": "c3", "ack": "commit", **again})
        answer = await ws.next_of_type("error", where=lambda f: f["req_id"] == "c3")
        assert answer["error"]["code"] == "duplicate_cell_bet"


async def test_ws_refuses_bets_and_account_before_auth(server: Server) -> None:
    player = await funded(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    async with connect_ws(server) as ws:
        await ws.send(
            {"type": "place_bet", "req_id": "r1", **player.signed_bet(cell["cell_id"], 1)}
        )
        error = await ws.next_of_type("error")
        assert error["req_id"] == "r1" and error["error"]["code"] == "unauthorized"
        await ws.send({"type": "subscribe", "channels": ["account"]})
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "unauthorized"
        await ws.send({"type": "subscribe", "channels": ["prices:NOPE"]})
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "invalid_request"
        await ws.auth("not-a-token")
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "unauthorized"
        await ws.ping()


@pytest.mark.parametrize(
    ("garbage", "close_code"),
    [("this is not json", 1007), (b"\x00\x01binary", 1003), ('{"type": "launch"}', 1007)],
)
async def test_ws_garbage_gets_error_frames_then_a_close_and_others_are_unaffected(
    server: Server, garbage: str | bytes, close_code: int
) -> None:
    limit = server.cfg.server.ws_max_bad_frames
    async with connect_ws(server) as bystander:
        await bystander.subscribe(f"prices:{server.symbol}")
        async with connect_ws(server) as ws:
            for _ in range(limit):
                await ws.send(garbage)
                error = await ws.next_of_type("error")
                assert error["error"]["code"] == "invalid_request"
                assert error["req_id"] is None
            await ws.ping()  # still served after `limit` bad frames
            await ws.send(garbage)
            with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    await ws.ws.get_message()
            assert closed.value.reason.code == close_code
        # The bystander and HTTP are served as before.
        tick = server.push(server.last_price + 100)
        price = await bystander.next_of_type("price", where=lambda f: f["ts"] == tick.ts)
        assert price["price"] == tick.price
        await bystander.ping()
        assert (await server.http().get("/livez")).status_code == 200


async def test_ws_bad_frames_echo_their_req_id(server: Server) -> None:
    async with connect_ws(server) as ws:
        await ws.send({"type": "ping", "req_id": "p1", "extra": True})
        error = await ws.next_of_type("error")
        assert error["req_id"] == "p1"
        assert error["error"]["code"] == "invalid_request"
        await ws.send({"type": "subscribe", "channels": "prices:BTC-USD", "req_id": "s1"})
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "invalid_request"
        await ws.ping()


async def test_a_request_answered_before_its_body_arrived_leaves_the_connection_usable(
    server: Server,
) -> None:
    """A 401 or 413 sent while the client is still uploading must not wedge the keep-alive
    connection: the client's next request on it is answered."""
    player = await funded(server)
    client = server.http(limits=httpx.Limits(max_connections=1))  # one connection, reused

    async def chunks(n: int, size: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b" " * size

    cases: list[tuple[str, dict[str, str], int, int, int]] = [
        ("/api/bets", player.auth, 40, 1000, 413),  # too large, read up to the limit
        ("/api/bets", {}, 40, 100, 401),  # refused before the body is read
        ("/api/auth/challenge", {}, 40, 1000, 413),
        ("/api/deposits", {"Authorization": "Bearer nope"}, 200, 10, 401),
    ]
    for path, auth, n, size, status in cases:
        headers = {**auth, "Content-Type": "application/json"}
        r = await client.post(path, content=chunks(n, size), headers=headers)
        assert r.status_code == status, (path, r.text)
        with trio.fail_after(3):
            r = await client.get("/api/markets")
        assert r.status_code == 200
