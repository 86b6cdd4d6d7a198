"""Sessions and challenges on every process and across restarts (API.md v1.1, Auth), end to end.

Real servers (`run_server`, Hypercorn sockets, SQLite in `tmp_path`), two at once on one database
directory where the test says so (they share its `session.secret`), real Redis under a unique
prefix for the claims several processes share, and a throwaway Redis for the outage.

What is pinned:
- a token from one server works on a second one on the same directory and after both restart;
- without Redis, a login message redeemed before a restart is refused after it (the claim memory
  was the process's);
- with Redis, a challenge issued at one server is redeemed at the other, once: a replay at either
  is `unknown_nonce`, and of 20 concurrent logins with one challenge over both exactly one wins;
- forged tokens and nonces are 401 (a message that is not EIP-4361 at all: 400), never 5xx;
- Redis down at login → 503 `dependency_unavailable`; the challenge is not spent;
- with the scale-out roles (a core and edges), a challenge from one edge is redeemed at another,
  once, and the token bets there and is good on an edge started later.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tap.sessions import TOKEN_CHARS
from tests.e2e import Player, Server, pick_cell, serving
from tests.redis_fixtures import ThrowawayRedis, redis_prefix, redis_url, throwaway_redis
from tests.test_e2e_redis import redis_overrides
from tests.test_scaleout_roles import deployment, start_edge

__all__ = ["redis_prefix", "redis_url", "throwaway_redis"]

DEPOSIT = 5_000_000
STAKE = 1_000_000
ANSWER_WITHIN_S = 1.5  # the Redis request timeout (750 ms) plus a busy 2-core machine


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def balance_with(server: Server, token: str) -> httpx.Response:
    return await server.http().get("/api/balance", headers=bearer(token))


async def challenge_at(server: Server, player: Player) -> dict[str, Any]:
    r = await server.http().post("/api/auth/challenge", json={"address": player.account.address})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def login_at(server: Server, message: str, signature: str) -> httpx.Response:
    return await server.http().post(
        "/api/auth/login", json={"message": message, "signature": signature}
    )


def code_of(r: httpx.Response) -> str:
    code: str = r.json()["error"]["code"]
    return code


async def test_a_token_works_on_a_second_server_and_after_a_restart(tmp_path: Path) -> None:
    async with serving(tmp_path, within=60) as first:
        player = first.player()
        challenge = await player.challenge()
        message = player.login_message(challenge)
        signature = player.sign_message(message)
        r = await player.post_login(message, signature)
        assert r.status_code == 200, r.text
        player.token = token = r.json()["token"]
        await player.deposit(DEPOSIT)
        async with serving(tmp_path) as second:  # the same database directory
            r = await balance_with(second, token)
            assert r.status_code == 200, r.text
            assert r.json()["available"] == DEPOSIT
            async with player.ws() as ws:  # the WS `auth` frame too (on the first server)
                await ws.subscribe("account")
    async with serving(tmp_path) as restarted:
        r = await balance_with(restarted, token)
        assert r.status_code == 200, r.text
        assert r.json()["available"] == DEPOSIT
        # Without Redis the claims were the old process's memory: the message redeemed before
        # the restart cannot be told apart from an unredeemed one, so it is refused.
        r = await login_at(restarted, message, signature)
        assert r.status_code == 401 and code_of(r) == "unknown_nonce", r.text
        fresh = restarted.player()
        await fresh.login()


@pytest.mark.redis
async def test_a_challenge_is_redeemed_once_across_servers_sharing_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    redis = redis_overrides(redis_url, redis_prefix)
    async with serving(tmp_path, within=90, **redis) as a, serving(tmp_path, **redis) as b:
        player = a.player()
        message = player.login_message(await challenge_at(a, player))
        signature = player.sign_message(message)
        r = await login_at(b, message, signature)
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert (await balance_with(a, token)).status_code == 200
        for server in (a, b):
            r = await login_at(server, message, signature)
            assert r.status_code == 401 and code_of(r) == "unknown_nonce", r.text

        # Twenty logins with one challenge at once, half at each server: exactly one session.
        message = player.login_message(await challenge_at(b, player))
        signature = player.sign_message(message)
        answers: list[httpx.Response] = []

        async def attempt(server: Server) -> None:
            answers.append(await login_at(server, message, signature))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(attempt, (a, b)[i % 2])
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] + [401] * 19, [r.text for r in answers]
        assert {code_of(r) for r in answers if r.status_code == 401} == {"unknown_nonce"}
    # The claim outlives the processes: after a restart the replay is still refused.
    async with serving(tmp_path, **redis) as restarted:
        r = await login_at(restarted, message, signature)
        assert r.status_code == 401 and code_of(r) == "unknown_nonce", r.text
        assert (await balance_with(restarted, token)).status_code == 200


def _flip(text: str, i: int) -> str:
    alphabet = "0123456789abcdef" if text[i] in "0123456789abcdef" else "AB"
    return text[:i] + next(c for c in alphabet if c != text[i]) + text[i + 1 :]


def forged_tokens(token: str) -> dict[str, str | bytes]:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    def rewritten(offset: int) -> str:
        changed = bytearray(raw)
        changed[offset] ^= 0x01
        return base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()

    return {
        "mac": rewritten(len(raw) - 1),
        "address": rewritten(1),
        "session_key": rewritten(21),
        "expires_at": rewritten(1 + 20 + 32 + 8 + 7),
        "version": rewritten(0),
        "truncated": token[:-1],
        "extended": token + "A",
        "10 KB": "A" * 10_000,
        "non-ascii": token[:-1] + "é",
        "latin-1 bytes": token.encode()[:-1] + b"\xff",
        "empty": "",
    }


async def test_forged_tokens_and_nonces_are_refused_never_5xx(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        player = server.player()
        await player.login()
        assert player.token is not None and len(player.token) == TOKEN_CHARS
        client = server.http()
        for name, forged in forged_tokens(player.token).items():
            value = b"Bearer " + (forged if isinstance(forged, bytes) else forged.encode())
            value = value.strip()  # h11 sends no trailing blank: the empty one is "Bearer"
            r = await client.get("/api/balance", headers={"Authorization": value})
            assert r.status_code == 401 and code_of(r) == "unauthorized", (name, r.text)
        async with player.ws(auth=False) as ws:
            for name, forged in forged_tokens(player.token).items():
                if isinstance(forged, bytes):
                    continue
                await ws.send({"type": "auth", "token": forged})
                error = await ws.next_of_type("error")
                # Longer than a token may be (256): refused by decoding, as any oversized field.
                expected = "invalid_request" if len(forged) > 256 else "unauthorized"
                assert error["error"]["code"] == expected, (name, error)
            await ws.auth(player.token)  # the connection lives on; the real token works
            await ws.subscribe("account")

        challenge = await player.challenge()
        nonce = challenge["nonce"]
        for name, bad_nonce in {
            "mac": _flip(nonce, len(nonce) - 1),
            "issued_at": _flip(nonce, 5),
            "random": _flip(nonce, 20),
            "truncated": nonce[:-1],
            "long": nonce + "0" * 3_000,
        }.items():
            message = player.login_message(challenge, nonce=bad_nonce)
            r = await player.post_login(message, player.sign_message(message))
            assert r.status_code == 401 and code_of(r) == "unknown_nonce", (name, r.text)
        message = player.login_message(challenge).replace(nonce, nonce[:-1] + "é")
        r = await player.post_login(message, player.sign_message(message))
        assert r.status_code == 400 and code_of(r) == "invalid_request", r.text  # not EIP-4361
        message = player.login_message(challenge)  # none of that spent the challenge
        r = await player.post_login(message, player.sign_message(message))
        assert r.status_code == 200, r.text


@pytest.mark.redis
async def test_redis_down_at_login_is_503_and_spends_no_challenge(
    tmp_path: Path, throwaway_redis: ThrowawayRedis
) -> None:
    async with serving(tmp_path, **redis_overrides(throwaway_redis.url, "tap")) as server:
        player = server.player()
        message = player.login_message(await player.challenge())
        signature = player.sign_message(message)
        throwaway_redis.kill()
        with trio.fail_after(ANSWER_WITHIN_S):
            r = await player.post_login(message, signature)
        assert r.status_code == 503 and code_of(r) == "dependency_unavailable", r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert (await server.http().get("/livez")).status_code == 200
        # Challenges need no Redis: they are signed, not stored.
        assert (await player.challenge())["nonce"]
        throwaway_redis.start()  # the same port, empty
        with trio.fail_after(5):
            while (r := await player.post_login(message, signature)).status_code == 503:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert r.status_code == 200, r.text


@pytest.mark.redis
async def test_on_a_core_and_edges_a_session_from_one_edge_bets_on_another_and_on_a_new_one(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """The scale-out roles (`run_server(role="core" | "edge")`): a challenge from edge A is
    redeemed at edge B, once; the token bets at B and is good on an edge started afterwards."""
    async with deployment(tmp_path, redis_url, redis_prefix, edges=2, within=90) as d:
        a, b = d.edges
        player = a.player()
        message = player.login_message(await challenge_at(a, player))
        signature = player.sign_message(message)
        r = await login_at(b, message, signature)
        assert r.status_code == 200, r.text
        player.token = r.json()["token"]
        r = await login_at(a, message, signature)
        assert r.status_code == 401 and code_of(r) == "unknown_nonce", r.text
        await player.deposit(10 * STAKE)  # through edge A
        player.server, player.http = b, b.http()
        cell = await pick_cell(b, min_lead_ms=3000)
        r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
        assert r.status_code == 202, r.text
        c = await start_edge(d.nursery, d)  # a deploy adds (or replaces) an edge
        d.edges.append(c)
        r = await balance_with(c, player.token)
        assert r.status_code == 200, r.text
        assert r.json()["available"] == 9 * STAKE
