"""The `HotState` contract, pinned once and run against both implementations: `InMemoryHotState`
and `RedisHotState` (a real Redis under a unique prefix) must give the same answers.

Time is the `now_ms` each call passes; neither implementation reads a clock for its answers, so
the rate-limit tests are exact. (Redis measures memory lengths on its own clock; nothing here
waits for one to run out.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from actors.redis_gateway import open_redis_hot_state
from tap.config import Config
from tap.hotstate import ADMITTED, Admit, HotState
from tap.store.redis_hot import RedisHotState
from tests.redis_fixtures import hot_config, redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]  # fixtures used through `hot`

SKEW_MS = 30_000
RATE_PER_S = 10.0  # one token per 100 ms
BURST = 5
T0 = 1_732_290_000_000
CELL = "BTC-USD:346458012:10012"
OTHER_CELL = "BTC-USD:346458013:10012"
A = "0x00000000000000000000000000000000000000aa"
B = "0x00000000000000000000000000000000000000bb"
C = "0x00000000000000000000000000000000000000cc"


def nonce(i: int) -> str:
    return f"nonce-{i:016d}"


@pytest.fixture(params=["memory", "redis"])
def hot_config_or_none(request: pytest.FixtureRequest) -> Config | None:
    if request.param == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return hot_config(url, prefix, rate_per_s=RATE_PER_S, burst=BURST)


@pytest.fixture
async def hot(hot_config_or_none: Config | None) -> AsyncIterator[HotState]:
    if hot_config_or_none is None:
        from tap.hotstate import InMemoryHotState  # lazily: it is the other half of this seam

        yield InMemoryHotState(SKEW_MS, RATE_PER_S, BURST)
        return
    async with open_redis_hot_state(hot_config_or_none) as redis_hot:
        yield redis_hot


async def spendable(hot: Any, address: str) -> int:
    """Both implementations expose the hot balance beyond the protocol (sync in memory)."""
    if isinstance(hot, RedisHotState):
        return await hot.spendable(address) or 0
    value: int = hot.spendable(address)
    return value


async def test_admitted_bet_reserves_its_stake(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 300, T0)).ok
    assert await spendable(hot, A) == 700
    assert await hot.nonce_seen(A, nonce(1))


async def test_replayed_nonce_is_refused_and_reserves_nothing(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 300, T0)).ok
    again = await hot.admit_bet(A, nonce(1), OTHER_CELL, 300, T0 + 1)
    assert again == Admit(False, "replayed_nonce")
    assert await spendable(hot, A) == 700


async def test_nonces_are_per_address(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    await hot.credit(B, 1_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 100, T0)).ok
    assert (await hot.admit_bet(B, nonce(1), CELL, 100, T0)).ok


async def test_second_bet_on_a_cell_is_refused_and_its_nonce_forgotten(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 100, T0)).ok
    assert await hot.admit_bet(A, nonce(2), CELL, 100, T0) == Admit(False, "duplicate_cell_bet")
    assert not await hot.nonce_seen(A, nonce(2))
    assert await spendable(hot, A) == 900
    assert (await hot.admit_bet(A, nonce(2), OTHER_CELL, 100, T0)).ok


async def test_insufficient_funds_undoes_the_nonce_and_the_cell(hot: HotState) -> None:
    await hot.credit(A, 100)
    assert await hot.admit_bet(A, nonce(1), CELL, 101, T0) == Admit(False, "insufficient_funds")
    assert not await hot.nonce_seen(A, nonce(1))
    assert await spendable(hot, A) == 100
    assert (await hot.admit_bet(A, nonce(1), CELL, 100, T0)).ok  # same nonce, same cell
    assert await spendable(hot, A) == 0


async def test_unknown_address_has_nothing_to_spend(hot: HotState) -> None:
    assert await hot.admit_bet(C, nonce(1), CELL, 1, T0) == Admit(False, "insufficient_funds")
    assert await hot.admit_withdrawal(C, nonce(2), 1, T0) == Admit(False, "insufficient_funds")


async def test_rate_limit_answers_when_the_next_token_comes(hot: HotState) -> None:
    await hot.credit(A, 1_000_000)
    for i in range(BURST):
        assert (await hot.admit_bet(A, nonce(i), f"BTC-USD:1:{i}", 1, T0)).ok
    assert await hot.admit_bet(A, nonce(10), "BTC-USD:2:0", 1, T0) == Admit(
        False, "rate_limited", 100
    )
    assert await hot.admit_bet(A, nonce(10), "BTC-USD:2:0", 1, T0 + 99) == Admit(
        False, "rate_limited", 1
    )
    assert not await hot.nonce_seen(A, nonce(10))  # a rate refusal remembers nothing
    assert (await hot.admit_bet(A, nonce(10), "BTC-USD:2:0", 1, T0 + 100)).ok
    assert await spendable(hot, A) == 1_000_000 - BURST - 1


async def test_an_admitted_bet_says_how_many_rate_tokens_are_left(hot: HotState) -> None:
    """What `RateLimit-Remaining` / `RateLimit-Reset` on a 202 are made of: both backends
    count the same tokens, and the time until the bucket is full again."""
    await hot.credit(A, 1_000)
    first = await hot.admit_bet(A, nonce(1), CELL, 1, T0)
    assert (first.tokens_left, first.full_in_ms) == (BURST - 1, 100)
    second = await hot.admit_bet(A, nonce(2), OTHER_CELL, 1, T0 + 50)
    assert (second.tokens_left, second.full_in_ms) == (BURST - 2, 150)
    refused = await hot.admit_bet(A, nonce(2), OTHER_CELL, 1, T0 + 50)  # a replay
    assert refused.tokens_left is None


async def test_rate_token_is_kept_when_a_later_step_refuses(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 1, T0)).ok
    for _ in range(BURST - 1):
        assert (await hot.admit_bet(A, nonce(1), CELL, 1, T0)).reason == "replayed_nonce"
    refused = await hot.admit_bet(A, nonce(2), OTHER_CELL, 1, T0)
    assert refused == Admit(False, "rate_limited", 100)


async def test_rate_limit_is_per_address(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    await hot.credit(B, 1_000)
    for i in range(BURST):
        assert (await hot.admit_bet(A, nonce(i), f"BTC-USD:1:{i}", 1, T0)).ok
    assert (await hot.admit_bet(B, nonce(0), CELL, 1, T0)).ok


async def test_rate_bucket_never_refills_backwards_in_time(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    for i in range(BURST):
        assert (await hot.admit_bet(A, nonce(i), f"BTC-USD:1:{i}", 1, T0)).ok
    late = await hot.admit_bet(A, nonce(9), CELL, 1, T0 - 10_000)
    assert late == Admit(False, "rate_limited", 100)


async def test_release_with_nonce_forgets_it_and_clears_the_cell(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 400, T0)).ok
    await hot.release(A, 400, cell_id=CELL, nonce=nonce(1))
    assert await spendable(hot, A) == 1_000
    assert not await hot.nonce_seen(A, nonce(1))
    assert (await hot.admit_bet(A, nonce(1), CELL, 400, T0)).ok  # the client may retry


async def test_release_without_nonce_keeps_it_remembered(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 400, T0)).ok
    await hot.release(A, 400, cell_id=CELL)
    assert await spendable(hot, A) == 1_000
    assert await hot.nonce_seen(A, nonce(1))
    assert (await hot.admit_bet(A, nonce(1), CELL, 400, T0)).reason == "replayed_nonce"
    assert (await hot.admit_bet(A, nonce(2), CELL, 400, T0)).ok  # the cell is free again


async def test_credit_adds_and_a_negative_credit_subtracts(hot: HotState) -> None:
    await hot.credit(A, 500)
    await hot.credit(A, 250)
    await hot.credit(A, -100)
    assert await spendable(hot, A) == 650


async def test_credits_with_their_entry_ids_apply_in_any_order_after_a_rebuild(
    hot: HotState,
) -> None:
    # `rebuild` carries no ledger positions: nothing it wrote can hold these entries.
    await hot.rebuild({A: 100})
    await hot.credit(A, 500, entry_id=8)
    await hot.credit(A, 250, entry_id=7)  # another edge's commit, arriving second
    await hot.credit(A, -100, entry_id=9)
    await hot.credit(B, 40, entry_id=1)
    assert await spendable(hot, A) == 750
    assert await spendable(hot, B) == 40


async def test_withdrawal_reserves_and_shares_the_bet_nonces(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    assert await hot.admit_withdrawal(A, nonce(1), 600, T0) == ADMITTED
    assert await spendable(hot, A) == 400
    assert (await hot.admit_bet(A, nonce(1), CELL, 1, T0)).reason == "replayed_nonce"
    assert (await hot.admit_withdrawal(A, nonce(1), 1, T0)).reason == "replayed_nonce"
    refused = await hot.admit_withdrawal(A, nonce(2), 401, T0)
    assert refused == Admit(False, "insufficient_funds")
    assert not await hot.nonce_seen(A, nonce(2))
    await hot.release(A, 600, nonce=nonce(1))
    assert await spendable(hot, A) == 1_000


async def test_withdrawals_take_no_rate_token(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    for i in range(BURST + 3):
        assert (await hot.admit_withdrawal(A, nonce(i), 1, T0)).ok
    assert (await hot.admit_bet(A, nonce(99), CELL, 1, T0)).ok


async def test_rebuild_replaces_every_balance(hot: HotState) -> None:
    await hot.credit(A, 1_000)
    await hot.credit(B, 2_000)
    assert (await hot.admit_bet(A, nonce(1), CELL, 300, T0)).ok
    await hot.rebuild({A: 5_000, C: 7})
    assert await spendable(hot, A) == 5_000
    assert await spendable(hot, B) == 0
    assert await spendable(hot, C) == 7
    assert await hot.nonce_seen(A, nonce(1))  # a rebuild touches balances only


async def test_stakes_must_be_positive(hot: HotState) -> None:
    with pytest.raises(ValueError):
        await hot.admit_bet(A, nonce(1), CELL, 0, T0)
    with pytest.raises(ValueError):
        await hot.admit_withdrawal(A, nonce(1), -5, T0)


async def test_ping_answers_true_when_the_store_is_up(hot: HotState) -> None:
    assert await hot.ping()


# ── login claims ──────────────────────────────────────────────────────────────────────────────


async def test_a_name_is_claimed_once_while_its_claim_lives(hot: HotState) -> None:
    assert await hot.claim_once("login:n1", 60_000, T0)
    assert not await hot.claim_once("login:n1", 60_000, T0 + 1)
    assert await hot.claim_once("login:n2", 60_000, T0 + 1)
    assert not await hot.claim_once("login:n2", 60_000, T0 + 2)


async def test_of_many_claims_of_one_name_at_once_exactly_one_wins(hot: HotState) -> None:
    wins: list[bool] = []

    async def claim() -> None:
        wins.append(await hot.claim_once("login:race", 60_000, T0))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(claim)
    assert sorted(wins) == [False] * 19 + [True]
