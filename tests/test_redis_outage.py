"""Redis failing under the hot state: killed, blackholed (SIGSTOP), restarted empty, flushed, or
down when the process starts. Admission must answer `HotStateUnavailable` within the request
timeout (never hang, never admit unchecked), come back by itself within seconds of Redis, and
tell its owner so the balance cache is rebuilt from the ledger.

Each test runs its own throwaway `redis-server`. `trio.fail_after` only bounds the waits (a hang
fails the test instead of stalling the suite); nothing asserts how long anything took.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from actors import breaker_override
from actors.redis_gateway import open_redis_hot_state
from tap.config import Config
from tap.hotstate import HotStateUnavailable
from tap.messages import BreakerMode
from tap.store.redis_hot import RedisHotState
from tests.redis_fixtures import ThrowawayRedis, hot_config, throwaway_redis

__all__ = ["throwaway_redis"]

pytestmark = pytest.mark.slow

T0 = 1_732_290_000_000
A = "0x00000000000000000000000000000000000000aa"
B = "0x00000000000000000000000000000000000000bb"
ANSWER_WITHIN_S = 1.0  # the brief: an outage is answered within a second
RECOVER_WITHIN_S = 5.0  # ... and healed within five once Redis is back


def outage_config(url: str) -> Config:
    # A deadline under ANSWER_WITHIN_S leaves the bound room for a busy CI machine.
    return hot_config(url, "tap", request_timeout_ms=750, socket_timeout_ms=250)


def nonce(i: int) -> str:
    return f"nonce-{i:016d}"


def cell(i: int) -> str:
    return f"BTC-USD:{346458012 + i}:10012"


@dataclass
class Owner:
    """Plays the supervisor: on every recovery it rebuilds the cache from its "ledger"."""

    ledger: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    rebuilt: trio.Event = field(default_factory=trio.Event)

    async def read_ledger(self) -> Mapping[str, tuple[int, int]]:
        return {address: (available, 0) for address, available in self.ledger.items()}

    async def wait_rebuilt(self) -> None:
        await self.rebuilt.wait()
        self.rebuilt = trio.Event()


@asynccontextmanager
async def owned_hot_state(cfg: Config, owner: Owner) -> AsyncIterator[RedisHotState]:
    # One pending rebuild is enough: recoveries that arrive meanwhile are covered by it.
    send, receive = trio.open_memory_channel[str](1)

    def on_recovered(why: str) -> None:
        owner.reasons.append(why)
        try:
            send.send_nowait(why)
        except trio.WouldBlock:
            pass

    async def rebuild_on_recovery(hot: RedisHotState) -> None:
        async for _ in receive:
            try:
                await hot.rebuild_from(owner.read_ledger)
            except HotStateUnavailable:
                continue  # down again: the next recovery rebuilds
            owner.rebuilt.set()

    async with (
        open_redis_hot_state(cfg, on_recovered=on_recovered) as hot,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(rebuild_on_recovery, hot)
        yield hot
        nursery.cancel_scope.cancel()


async def assert_unavailable_at_once(hot: RedisHotState, address: str, first_nonce: int) -> None:
    """Twenty concurrent admissions, every one refused with HotStateUnavailable in time."""
    refused = 0

    async def place(i: int) -> None:
        nonlocal refused
        with pytest.raises(HotStateUnavailable):
            await hot.admit_bet(address, nonce(first_nonce + i), cell(first_nonce + i), 1, T0)
        refused += 1

    with trio.fail_after(ANSWER_WITHIN_S):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(place, i)
    assert refused == 20


async def test_killed_redis_is_answered_at_once_and_healed_after_restart(
    throwaway_redis: ThrowawayRedis,
) -> None:
    owner = Owner(ledger={A: 1_000})
    async with owned_hot_state(outage_config(throwaway_redis.url), owner) as hot:
        await hot.rebuild_from(owner.read_ledger)  # startup
        assert (await hot.admit_bet(A, nonce(1), cell(1), 100, T0)).ok
        owner.ledger[A] = 900  # the writer committed that bet

        throwaway_redis.kill()
        await assert_unavailable_at_once(hot, A, 100)
        with trio.fail_after(ANSWER_WITHIN_S):
            assert not await hot.ping()

        throwaway_redis.restart()  # empty: nothing is kept on disk
        with trio.fail_after(RECOVER_WITHIN_S):
            await owner.wait_rebuilt()
        assert "reconnected" in owner.reasons
        assert await hot.ping()
        assert await hot.spendable(A) == 900  # from the ledger, via the recovery hook
        assert not await hot.nonce_seen(A, nonce(1))  # gone: the ledger's UNIQUE is the backstop
        assert (await hot.admit_bet(A, nonce(2), cell(2), 100, T0)).ok


async def test_blackholed_redis_is_answered_in_time_and_healed_after_it_resumes(
    throwaway_redis: ThrowawayRedis,
) -> None:
    owner = Owner(ledger={A: 1_000, B: 1_000})
    async with owned_hot_state(outage_config(throwaway_redis.url), owner) as hot:
        await hot.rebuild_from(owner.read_ledger)
        assert (await hot.admit_bet(B, nonce(1), cell(1), 100, T0)).ok

        throwaway_redis.stop()
        # (A stopped server still completes TCP handshakes: only deadlines can tell.)
        await assert_unavailable_at_once(hot, A, 100)
        with trio.fail_after(ANSWER_WITHIN_S):
            assert not await hot.ping()
        await assert_unavailable_at_once(hot, A, 200)  # again, on fresh connections

        throwaway_redis.cont()
        with trio.fail_after(RECOVER_WITHIN_S):
            await owner.wait_rebuilt()
        assert "reconnected" in owner.reasons
        assert (await hot.admit_bet(B, nonce(2), cell(2), 100, T0)).ok
        assert await hot.spendable(B) == 900  # B was untouched by the outage


async def test_flushed_redis_is_noticed_and_rebuilt_without_a_reconnect(
    throwaway_redis: ThrowawayRedis,
) -> None:
    owner = Owner(ledger={A: 1_000})
    async with owned_hot_state(outage_config(throwaway_redis.url), owner) as hot:
        await hot.rebuild_from(owner.read_ledger)
        assert (await hot.admit_bet(A, nonce(1), cell(1), 100, T0)).ok
        owner.ledger[A] = 900

        throwaway_redis.flushall()
        with trio.fail_after(RECOVER_WITHIN_S):
            await owner.wait_rebuilt()
        assert owner.reasons == ["data_lost"]
        assert not await hot.nonce_seen(A, nonce(1))  # gone: the ledger's UNIQUE is the backstop
        assert await hot.spendable(A) == 900
        assert (await hot.admit_bet(A, nonce(2), cell(1), 900, T0)).ok


async def test_hot_state_starts_while_redis_is_down_and_joins_when_it_comes(
    throwaway_redis: ThrowawayRedis,
) -> None:
    throwaway_redis.kill()
    owner = Owner(ledger={A: 500})
    async with owned_hot_state(outage_config(throwaway_redis.url), owner) as hot:
        with trio.fail_after(ANSWER_WITHIN_S):
            assert not await hot.ping()
        await assert_unavailable_at_once(hot, A, 0)

        throwaway_redis.start()
        with trio.fail_after(RECOVER_WITHIN_S):
            await owner.wait_rebuilt()
        assert (await hot.admit_bet(A, nonce(1), cell(1), 500, T0)).ok


async def test_override_subscriber_reconnects_after_a_restart(
    throwaway_redis: ThrowawayRedis,
) -> None:
    cfg = outage_config(throwaway_redis.url)
    owner = Owner()
    send, receive = trio.open_memory_channel[BreakerMode](4)  # a test's small inbox
    async with owned_hot_state(cfg, owner) as hot, trio.open_nursery() as nursery:
        subscribed = await nursery.start(breaker_override.run, cfg.redis, send)
        assert await trio.to_thread.run_sync(subscribed.wait, RECOVER_WITHIN_S)
        with trio.fail_after(RECOVER_WITHIN_S):
            await hot.publish_override("open")
            assert await receive.receive() == "open"

        throwaway_redis.restart()
        with trio.fail_after(RECOVER_WITHIN_S):
            await owner.wait_rebuilt()  # the gateway is back
            await hot.publish_override("closed")
            # Heard live, or read from the stored mode when the subscriber comes back.
            assert await receive.receive() == "closed"
        nursery.cancel_scope.cancel()
