"""The bet path with the Redis hot state, end to end: a journey on the shared Redis, a replay
after Redis lost its data, and Redis going down and coming back under a running server.

`trio.fail_after` bounds every wait; the bounds are the promises (an outage is answered within
about a second, admission heals within five seconds of Redis returning), not measurements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tap.store.redis_hot import RedisHotState
from tests.e2e import Player, Server, outside, pick_cell, serving
from tests.redis_fixtures import (
    ThrowawayRedis,
    redis_prefix,
    redis_url,
    throwaway_redis,
)

__all__ = ["redis_prefix", "redis_url", "throwaway_redis"]

pytestmark = pytest.mark.redis

STAKE = 1_000_000
ANSWER_WITHIN_S = 1.5  # "within ~1 s": the request timeout plus a busy 2-core machine
RECOVER_WITHIN_S = 5.0


def redis_overrides(url: str, prefix: str) -> dict[str, Any]:
    return {
        "redis__url": url,
        "redis__prefix": prefix,
        "redis__request_timeout_ms": 750,
        "redis__socket_timeout_ms": 250,
        "redis__connect_timeout_ms": 250,
    }


async def funded(server: Server, amount: int = 20 * STAKE) -> Player:
    player = server.player()
    await player.login()
    await player.deposit(amount)
    return player


async def wait_until_spendable(server: Server, player: Player, amount: int) -> None:
    """Ledger-sync credits the hot balance just after a commit: wait for it to land."""
    hot = server.running.services.hot
    assert isinstance(hot, RedisHotState)
    with trio.fail_after(5):
        while (await hot.spendable(player.address) or 0) < amount:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_the_bet_journey_runs_on_the_redis_hot_state(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with serving(tmp_path, **redis_overrides(redis_url, redis_prefix)) as server:
        assert (await server.http().get("/readyz")).json()["checks"]["redis"] == "pass"
        player = await funded(server)
        async with player.ws() as ws:
            await ws.subscribe("account")
            cell = await pick_cell(server, min_lead_ms=5000)
            body = player.signed_bet(cell["cell_id"], STAKE)
            r = await player.place(body)
            assert r.status_code == 202, r.text
            bet_id = r.json()["bet_id"]
            await ws.next_of_type("bet_confirmed", where=lambda f: f["bet"]["bet_id"] == bet_id)
            # A replay, before and after the commit.
            r = await player.place(body)
            assert r.status_code == 409 and r.json()["error"]["bet_id"] == bet_id
            r = await player.place(body, wait=5)
            assert r.status_code == 409 and r.json()["error"]["code"] == "replayed_nonce"
            r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
            assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate_cell_bet"
            # Win it.
            await server.walk(cell["t_start"], outside(cell, server.market.row_height))
            server.push(cell["price_lo"], cell["t_start"] + 5)
            frame = await ws.next_of_type(
                "bet_resolved", where=lambda f: f["bet"]["bet_id"] == bet_id
            )
            payout = STAKE * frame["bet"]["multiplier_bps"] // 10_000
            assert frame["bet"]["status"] == "won" and frame["bet"]["payout"] == payout
        balance = await player.balance()
        assert (balance["available"], balance["locked"]) == (20 * STAKE - STAKE + payout, 0)
        # The payout is spendable through Redis: the hot balance followed the ledger.
        await wait_until_spendable(server, player, balance["available"])
        r = await player.withdraw(balance["available"])
        assert r.status_code == 201, r.text
        r = await player.withdraw(1)
        assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_funds"


async def test_a_replay_after_redis_lost_its_data_never_takes_effect_twice(
    tmp_path: Path, throwaway_redis: ThrowawayRedis
) -> None:
    async with serving(tmp_path, **redis_overrides(throwaway_redis.url, "tap")) as server:
        player = await funded(server)
        cell = await pick_cell(server, min_lead_ms=3000)
        body = player.signed_bet(cell["cell_id"], STAKE)
        r = await player.place(body, wait=5)
        assert r.status_code == 201, r.text
        bet_id = r.json()["bet_id"]

        throwaway_redis.flushall()  # every nonce, marker and balance in Redis is gone
        r = await player.place(body, wait=5)
        # Refused at admission (nonces re-seeded from the ledger) or by the writer (UNIQUE nonce).
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "replayed_nonce"
        assert r.json()["error"]["bet_id"] == bet_id

        # Once the rebuild has run, admission itself refuses it, and new bets still work.
        with trio.fail_after(RECOVER_WITHIN_S):
            while True:
                r = await player.place(body)
                assert r.status_code == 409, r.text
                if r.json()["error"]["code"] == "replayed_nonce":
                    break
        grid = await server.grid()
        other = next(
            c
            for c in grid["cells"]
            if c["placeable"]
            and c["t_start"] > server.now() + 3000
            and c["cell_id"] != cell["cell_id"]
        )
        r = await player.place(cell_id=other["cell_id"], amount=STAKE, wait=5)
        assert r.status_code == 201, r.text

        # One stake per bet in the ledger, and the money agrees.
        stakes = [e for e in await player.ledger() if e["kind"] == "stake"]
        assert len(stakes) == 2
        balance = await player.balance()
        assert (balance["available"], balance["locked"]) == (18 * STAKE, 2 * STAKE)


async def test_redis_down_answers_503_fast_and_admission_heals_when_it_returns(
    tmp_path: Path, throwaway_redis: ThrowawayRedis
) -> None:
    async with serving(tmp_path, **redis_overrides(throwaway_redis.url, "tap")) as server:
        player = await funded(server)
        cells = iter(
            c
            for c in (await server.grid())["cells"]
            if c["placeable"] and c["t_start"] > server.now() + 8000
        )
        client = server.http()

        throwaway_redis.kill()
        with trio.fail_after(ANSWER_WITHIN_S):
            r = await player.place(cell_id=next(cells)["cell_id"], amount=STAKE)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "dependency_unavailable"
        assert int(r.headers["Retry-After"]) >= 1

        with trio.fail_after(ANSWER_WITHIN_S + 1):
            ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] == "fail"
        with trio.fail_after(ANSWER_WITHIN_S + 1):
            health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "warn"  # serving, degraded: reads and commits work
        assert health.json()["checks"]["redis"]["status"] == "fail"
        assert "Redis" in health.json()["checks"]["redis"]["reason"]
        # Everything that does not need Redis keeps working.
        assert (await client.get("/livez")).status_code == 200
        assert (await player.balance())["available"] == 20 * STAKE
        assert (await client.get(f"/api/grid/{server.symbol}")).status_code == 200

        throwaway_redis.start()  # the same port, empty
        with trio.fail_after(RECOVER_WITHIN_S):
            while True:
                r = await player.place(cell_id=next(cells)["cell_id"], amount=STAKE)
                if r.status_code == 202:
                    break
                assert r.status_code in (503, 422), r.text
                await trio.sleep(0.05)
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        # The money is exactly what the ledger allows: the rest of the balance can be staked, and
        # not a unit more — refused at admission, or by the writer (the final authority: a hot
        # balance rebuilt while a bet was in flight may read high until the next rebuild).
        r = await player.place(cell_id=next(cells)["cell_id"], amount=19 * STAKE, wait=5)
        assert r.status_code == 201, r.text
        r = await player.place(cell_id=next(cells)["cell_id"], amount=STAKE, wait=5)
        assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_funds"
        balance = await player.balance()
        assert (balance["available"], balance["locked"]) == (0, 20 * STAKE)
