"""`InMemoryHotState`: the `HotState` contract for one process, step order and undo included."""

from __future__ import annotations

import pytest

from tap.hotstate import ADMITTED, Admit, ClaimsFull, HotState, InMemoryHotState

SKEW = 30_000
A = "0x" + "aa" * 20
B = "0x" + "bb" * 20
N1 = "nonce-0000000001"
N2 = "nonce-0000000002"
N3 = "nonce-0000000003"


def make(rate: float = 10.0, burst: int = 20, marker_ttl_ms: int = 3_600_000) -> InMemoryHotState:
    hot = InMemoryHotState(SKEW, rate, burst, marker_ttl_ms=marker_ttl_ms)
    _typed: HotState = hot  # the protocol, checked by mypy wherever this file is checked
    return hot


async def funded(
    amount: int = 1_000, rate: float = 10.0, burst: int = 20, marker_ttl_ms: int = 3_600_000
) -> InMemoryHotState:
    hot = make(rate, burst, marker_ttl_ms)
    await hot.rebuild({A: amount})
    return hot


async def test_an_admitted_bet_reserves_its_stake() -> None:
    hot = await funded(1_000)
    assert (await hot.admit_bet(A, N1, "c1", 400, 0)).ok
    assert hot.spendable(A) == 600
    assert await hot.nonce_seen(A, N1)


async def test_a_replayed_nonce_is_refused_and_reserves_nothing() -> None:
    hot = await funded(1_000)
    assert (await hot.admit_bet(A, N1, "c1", 100, 0)).ok
    assert await hot.admit_bet(A, N1, "c2", 100, 1) == Admit(False, "replayed_nonce")
    assert hot.spendable(A) == 900


async def test_a_second_bet_on_a_cell_is_refused_and_its_nonce_stays_usable() -> None:
    hot = await funded(1_000)
    assert (await hot.admit_bet(A, N1, "c1", 100, 0)).ok
    assert await hot.admit_bet(A, N2, "c1", 100, 1) == Admit(False, "duplicate_cell_bet")
    assert not await hot.nonce_seen(A, N2)
    assert (await hot.admit_bet(A, N2, "c2", 100, 2)).ok
    assert (await hot.admit_bet(B, N3, "c1", 1, 3)).reason == "insufficient_funds"


async def test_insufficient_funds_undoes_the_nonce_and_the_cell_marker() -> None:
    hot = await funded(100)
    assert await hot.admit_bet(A, N1, "c1", 101, 0) == Admit(False, "insufficient_funds")
    assert not await hot.nonce_seen(A, N1)
    assert hot.spendable(A) == 100
    assert (await hot.admit_bet(A, N1, "c1", 100, 1)).ok  # same nonce, same cell: now fine
    assert hot.spendable(A) == 0


async def test_an_unknown_address_has_nothing_to_spend() -> None:
    hot = make()
    assert (await hot.admit_bet(B, N1, "c1", 1, 0)).reason == "insufficient_funds"
    assert (await hot.admit_withdrawal(B, N2, 1, 0)).reason == "insufficient_funds"


async def test_the_rate_token_comes_first_and_is_kept_on_refusal() -> None:
    hot = await funded(0, rate=1.0, burst=2)
    assert (await hot.admit_bet(A, N1, "c1", 1, 0)).reason == "insufficient_funds"
    assert (await hot.admit_bet(A, N1, "c1", 1, 0)).reason == "insufficient_funds"
    limited = await hot.admit_bet(A, N1, "c1", 1, 0)
    assert limited == Admit(False, "rate_limited", 1000)
    assert (await hot.admit_bet(A, N1, "c1", 1, 999)).retry_after_ms == 1
    assert (await hot.admit_bet(A, N1, "c1", 1, 1000)).reason == "insufficient_funds"


async def test_rate_limited_beats_replayed_nonce() -> None:
    hot = await funded(1_000, rate=1.0, burst=1)
    assert (await hot.admit_bet(A, N1, "c1", 1, 0)).ok
    assert (await hot.admit_bet(A, N1, "c1", 1, 0)).reason == "rate_limited"
    assert (await hot.admit_bet(A, N1, "c1", 1, 1000)).reason == "replayed_nonce"


async def test_release_gives_back_the_stake_the_cell_and_the_nonce() -> None:
    hot = await funded(1_000)
    assert (await hot.admit_bet(A, N1, "c1", 300, 0)).ok
    await hot.release(A, 300, cell_id="c1", nonce=N1)
    assert hot.spendable(A) == 1_000
    assert not await hot.nonce_seen(A, N1)
    assert (await hot.admit_bet(A, N1, "c1", 300, 1)).ok


async def test_release_without_nonce_keeps_the_nonce_spent() -> None:
    """The writer refused the bet: it happened, so its nonce stays used."""
    hot = await funded(1_000)
    assert (await hot.admit_bet(A, N1, "c1", 300, 0)).ok
    await hot.release(A, 300, cell_id="c1")
    assert hot.spendable(A) == 1_000
    assert (await hot.admit_bet(A, N1, "c1", 300, 1)).reason == "replayed_nonce"
    assert (await hot.admit_bet(A, N2, "c1", 300, 2)).ok


async def test_withdrawals_check_the_nonce_then_reserve() -> None:
    hot = await funded(500)
    assert await hot.admit_withdrawal(A, N1, 600, 0) == Admit(False, "insufficient_funds")
    assert not await hot.nonce_seen(A, N1)
    assert await hot.admit_withdrawal(A, N1, 200, 1) == ADMITTED
    assert hot.spendable(A) == 300
    assert (await hot.admit_withdrawal(A, N1, 100, 2)).reason == "replayed_nonce"
    assert (await hot.admit_bet(A, N1, "c1", 100, 3)).reason == "replayed_nonce"


async def test_credit_adds_and_a_negative_adjustment_follows_the_ledger_down() -> None:
    hot = await funded(100)
    await hot.credit(A, 50)
    await hot.credit(B, 7)
    assert hot.spendable(A) == 150
    assert hot.spendable(B) == 7
    await hot.credit(A, -120)
    assert hot.spendable(A) == 30


async def test_rebuild_replaces_every_balance() -> None:
    hot = await funded(100)
    await hot.credit(B, 5)
    await hot.rebuild({B: 70})
    assert hot.spendable(A) == 0
    assert hot.spendable(B) == 70


async def test_nonces_are_remembered_for_twice_the_skew_then_left_to_the_window() -> None:
    hot = await funded(1_000)
    assert (await hot.admit_bet(A, N1, "c1", 1, 0)).ok
    assert (await hot.admit_bet(A, N1, "c2", 1, 2 * SKEW)).reason == "replayed_nonce"
    later = 2 * SKEW + SKEW  # well past memory + one bucket
    assert (await hot.admit_bet(A, N2, "c3", 1, later)).ok  # any call prunes
    assert not await hot.nonce_seen(A, N1)


async def test_cell_markers_expire_after_their_ttl() -> None:
    hot = await funded(1_000, marker_ttl_ms=65_000)
    assert (await hot.admit_bet(A, N1, "c1", 1, 0)).ok
    assert (await hot.admit_bet(A, N2, "c1", 1, 65_000)).reason == "duplicate_cell_bet"
    assert (await hot.admit_bet(A, N3, "c1", 1, 200_000)).ok


@pytest.mark.parametrize("amount", [0, -1])
async def test_non_positive_amounts_are_a_caller_error(amount: int) -> None:
    hot = await funded(1_000)
    with pytest.raises(ValueError, match="amount"):
        await hot.admit_bet(A, N1, "c1", amount, 0)
    with pytest.raises(ValueError, match="amount"):
        await hot.admit_withdrawal(A, N1, amount, 0)
    assert hot.spendable(A) == 1_000


async def test_ping_answers_and_aclose_is_harmless() -> None:
    hot = make()
    assert await hot.ping() is True
    await hot.aclose()


# ── login claims ──────────────────────────────────────────────────────────────────────────────


async def test_a_claim_is_free_again_when_its_ttl_has_passed() -> None:
    hot = make()
    assert await hot.claim_once("n", 1_000, 0)
    assert not await hot.claim_once("n", 1_000, 999)
    assert await hot.claim_once("n", 1_000, 1_000)
    assert hot.claims() == 1


async def test_claims_are_bounded_and_a_full_store_refuses_rather_than_evicts() -> None:
    hot = InMemoryHotState(SKEW, 10.0, 20, max_claims=3)
    for i in range(3):
        assert await hot.claim_once(f"n{i}", 1_000, 100 * i)
    with pytest.raises(ClaimsFull) as full:
        await hot.claim_once("late", 1_000, 250)
    assert full.value.retry_after_ms == 750  # when n0 expires
    assert not await hot.claim_once("n0", 1_000, 250)  # nothing was evicted
    assert await hot.claim_once("late", 1_000, 1_000)  # n0 expired and left
    assert hot.claims() == 3


async def test_expired_claims_leave_memory_without_being_asked_about() -> None:
    hot = make()
    for i in range(1_000):
        assert await hot.claim_once(f"flood{i}", 1_000, i)
    assert await hot.claim_once("later", 1_000, 5_000)
    assert hot.claims() == 1


async def test_a_claim_behind_a_longer_lived_one_expires_on_time() -> None:
    """Claims leave memory in claim order; one with a shorter ttl that waits behind an older,
    longer one is still free again once its own ttl has passed."""
    hot = make()
    assert await hot.claim_once("long", 10_000, 0)
    assert await hot.claim_once("short", 100, 1)
    assert not await hot.claim_once("short", 100, 100)
    assert await hot.claim_once("short", 100, 101)
