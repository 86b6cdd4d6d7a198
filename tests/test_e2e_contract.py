"""Contract details an outside client relies on (found by a black-box pass over API.md)."""

from __future__ import annotations

from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from tests.e2e import pick_cell, placeable_cells, serving
from tests.test_e2e_journey import DEPOSIT, STAKE


async def test_a_replay_is_409_even_while_the_breaker_is_open(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        player = server.player()
        await player.login()
        await player.deposit(DEPOSIT)
        cell = await pick_cell(server)
        body = player.signed_bet(cell_id=cell["cell_id"], amount=STAKE)
        first = await player.place(body)
        assert first.status_code == 202, first.text
        await server.set_breaker("open")
        again = await player.place(body)
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "replayed_nonce"
        assert again.json()["error"]["bet_id"] == first.json()["bet_id"]
        fresh = await player.place(cell_id=cell["cell_id"], amount=STAKE)  # a new nonce
        assert fresh.status_code == 503 and fresh.json()["error"]["code"] == "breaker_open"


async def test_readyz_503_says_when_to_retry(tmp_path: Path) -> None:
    async with serving(tmp_path) as server, server.http() as http:
        server.running.services.writer_alive = lambda: False  # this process cannot write
        r = await http.get("/readyz")
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1


async def test_the_websocket_handshake_carries_the_request_id(tmp_path: Path) -> None:
    async with (
        serving(tmp_path) as server,
        open_websocket_url(
            server.ws_url, extra_headers=[(b"X-Request-ID", b"ws-handshake-7")]
        ) as ws,
    ):
        assert (b"x-request-id", b"ws-handshake-7") in [
            (k.lower(), v) for k, v in ws.handshake_headers
        ]


async def test_login_must_carry_the_challenge_times(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        player = server.player()
        for changes in (
            {"issued_at_ms": 4_070_908_800_000},  # dated 2099
            {"expiration_ms": None},  # no Expiration Time: valid forever
        ):
            challenge = await player.challenge()
            message = player.login_message(challenge, **changes)
            r = await player.post_login(message, player.sign_message(message))
            assert r.status_code == 401, (changes, r.text)
            assert r.json()["error"]["code"] == "expired"
        await player.login()  # the exact values still work


async def test_prefer_wait_is_case_insensitive(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        player = server.player()
        await player.login()
        await player.deposit(DEPOSIT)
        cell = await pick_cell(server)
        headers = {**player.auth, "Prefer": "WAIT=5"}
        body = player.signed_bet(cell_id=cell["cell_id"], amount=STAKE)
        r = await player.http.post("/api/bets", json=body, headers=headers)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "confirmed"


async def test_a_session_ends_when_its_token_expires_on_http_and_websocket(tmp_path: Path) -> None:
    async with serving(tmp_path, auth__session_ttl_ms=1500) as server:
        player = server.player()
        await player.login()
        await player.deposit(DEPOSIT)
        async with player.ws() as ws:
            await trio.sleep(1.6)  # real sockets: the session's 1.5 s lifetime must pass
            cell = await pick_cell(server)
            bet = player.signed_bet(cell_id=cell["cell_id"], amount=STAKE)
            await ws.send({"type": "place_bet", "req_id": "late", **bet})
            error = await ws.next_of_type("error", where=lambda f: f.get("req_id") == "late")
            assert error["error"]["code"] == "unauthorized"
        r = await player.http.get("/api/balance", headers=player.auth)  # and on HTTP
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text


async def test_challenges_are_rate_limited_per_client(tmp_path: Path) -> None:
    limits = {"limits__challenge_rate_per_s": 10.0, "limits__challenge_burst": 20}
    async with serving(tmp_path, **limits) as server, server.http() as http:
        address = "0x" + "cd" * 20
        statuses = [
            (await http.post("/api/auth/challenge", json={"address": address})).status_code
            for _ in range(40)
        ]
        assert statuses.count(200) >= 20 and 429 in statuses


async def test_a_bet_whose_payout_exceeds_the_limit_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path, markets__0__max_bet_payout=STAKE) as server:
        player = server.player()
        await player.login()
        await player.deposit(DEPOSIT)
        cell = await pick_cell(server)
        r = await player.place(cell_id=cell["cell_id"], amount=STAKE)  # multiplier > 1×
        assert r.status_code == 422 and r.json()["error"]["code"] == "exposure_limit"


async def test_an_accepted_bet_carries_ratelimit_headers_to_pace_by(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        player = server.player()
        await player.login()
        await player.deposit(DEPOSIT)
        burst = server.cfg.limits.burst
        seen = []
        cells = placeable_cells(await server.grid(), after_ts=server.now() + 3000)[:2]
        for cell in cells:
            r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
            assert r.status_code == 202, r.text
            seen.append(r.headers)
        assert [h["RateLimit-Limit"] for h in seen] == [str(burst)] * 2
        first, second = (int(h["RateLimit-Remaining"]) for h in seen)
        assert first == burst - 1 and second <= first  # one token per bet, refilled over time
        assert all(int(h["RateLimit-Reset"]) >= 1 for h in seen)
