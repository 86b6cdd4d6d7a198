"""The ledger-sync actor: each committed verdict moves the hot state the safe way, and only once.

Admission really runs here (`InMemoryHotState.admit_bet`), so a "hold" is the reservation
admission made, and "the cell" and "the nonce" are admission's own markers: what a test checks is
what the next request from the same player would be told.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from functools import partial

import msgspec
import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from actors import ledger_sync
from actors.fanout import CommittedFanout
from tap.hotstate import ADMITTED, Admit, HotStateUnavailable, InMemoryHotState
from tap.messages import (
    BalanceChanged,
    Bet,
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    EntryPosted,
    LedgerEntry,
)
from tap.pending import PendingBets

NOW = 1_732_290_000_000
ALICE = "0xa11ce"
CELL = "BTC-USD:100:7"
OTHER_CELL = "BTC-USD:100:8"
STAKE = 1_000
FUNDS = 10_000


def bet(
    nonce: str = "n1", *, accepted_at: int = NOW, cell_id: str = CELL, **changes: object
) -> Bet:
    fields: dict[str, object] = {
        "bet_id": f"bet-{nonce}",
        "address": ALICE,
        "cell_id": cell_id,
        "amount": STAKE,
        "multiplier_bps": 25_000,
        "nonce": nonce,
        "status": "pending",
        "accepted_at": accepted_at,
    }
    fields.update(changes)
    return Bet(**fields)  # type: ignore[arg-type]


def entry(kind: str, amount: int, ref: str = "r1") -> LedgerEntry:
    return LedgerEntry(
        entry_id=1,
        address=ALICE,
        kind=kind,  # type: ignore[arg-type]
        amount=amount,
        locked_delta=0,
        balance_after=FUNDS + amount,
        ref=ref,
        at=NOW,
    )


class Desk:
    """What the edge holds for one player: the hot state, and bets answered 202."""

    def __init__(self) -> None:
        self.hot = InMemoryHotState(30_000, 1_000.0, 1_000)
        self.pending = PendingBets()

    async def fund(self, amount: int = FUNDS) -> None:
        await self.hot.rebuild({ALICE: amount})

    async def admit(self, nonce: str = "n1", cell_id: str = CELL, at: int = NOW) -> Admit:
        """Admission as the edge runs it: reserve, and remember the bet as pending."""
        admit = await self.hot.admit_bet(ALICE, nonce, cell_id, STAKE, at)
        if admit.ok:
            self.pending.add(bet(nonce, accepted_at=at, cell_id=cell_id))
        return admit

    async def apply(self, event: Committed) -> None:
        await ledger_sync.apply(self.hot, self.pending, event)

    @property
    def spendable(self) -> int:
        return self.hot.spendable(ALICE)


@pytest.fixture
async def desk() -> Desk:
    d = Desk()
    await d.fund()
    return d


# ── bets ─────────────────────────────────────────────────────────────────────────────────────


async def test_a_confirmed_bet_leaves_pending_and_keeps_its_hold_cell_and_nonce(
    desk: Desk,
) -> None:
    assert (await desk.admit()).ok
    await desk.apply(BetConfirmed(bet=bet(status="confirmed", confirmed_at=NOW + 5)))
    assert desk.pending.get("bet-n1") is None
    assert desk.spendable == FUNDS - STAKE  # the hold is now the ledger's stake
    assert (await desk.admit("n2")).reason == "duplicate_cell_bet"
    assert await desk.hot.nonce_seen(ALICE, "n1")


async def test_a_confirmation_nobody_here_was_waiting_for_moves_nothing(desk: Desk) -> None:
    # Another edge process admitted it: its hold lives there, not here.
    await desk.apply(BetConfirmed(bet=bet(status="confirmed")))
    assert desk.spendable == FUNDS


@pytest.mark.parametrize("reason", ["insufficient_funds", "duplicate_cell_bet", "replayed_nonce"])
async def test_a_stored_rejection_releases_hold_and_cell_but_keeps_the_nonce_burned(
    desk: Desk, reason: str
) -> None:
    assert (await desk.admit()).ok
    await desk.apply(BetRejected(bet=bet(status="rejected", reason=reason), reason=reason))
    assert desk.pending.get("bet-n1") is None
    assert desk.spendable == FUNDS
    assert await desk.hot.nonce_seen(ALICE, "n1")
    assert (await desk.admit("n1", OTHER_CELL)).reason == "replayed_nonce"
    assert (await desk.admit("n2")).ok  # the cell is free again


@pytest.mark.parametrize("reason", sorted(ledger_sync.UNSTORED_REFUSALS))
async def test_an_unstored_refusal_also_forgets_the_nonce_so_the_client_may_retry_it(
    desk: Desk, reason: str
) -> None:
    assert (await desk.admit()).ok
    await desk.apply(BetRejected(bet=bet(status="rejected", reason=reason), reason=reason))
    assert desk.pending.get("bet-n1") is None
    assert desk.spendable == FUNDS
    assert not await desk.hot.nonce_seen(ALICE, "n1")
    assert (await desk.admit("n1")).ok  # the same request, retried


async def test_a_replay_answered_with_the_earlier_bet_gives_the_replays_hold_back(
    desk: Desk,
) -> None:
    # Redis lost its memory, so admission let a replay of n1 through and reserved for it again;
    # the writer answers with the bet that nonce made earlier (an older accepted_at).
    assert (await desk.admit("n1", at=NOW + 60_000)).ok
    assert desk.spendable == FUNDS - STAKE
    earlier = bet(status="confirmed", accepted_at=NOW, confirmed_at=NOW + 5)
    await desk.apply(BetConfirmed(bet=earlier))
    assert desk.pending.get("bet-n1") is None
    assert desk.spendable == FUNDS  # no stake moved for the replay: its hold is released
    assert (await desk.admit("n2", at=NOW + 60_001)).reason == "duplicate_cell_bet"
    assert await desk.hot.nonce_seen(ALICE, "n1")


async def test_the_replay_release_happens_once_even_if_the_confirmation_comes_twice(
    desk: Desk,
) -> None:
    assert (await desk.admit("n1", at=NOW + 60_000)).ok
    earlier = BetConfirmed(bet=bet(status="confirmed", accepted_at=NOW, confirmed_at=NOW + 5))
    await desk.apply(earlier)
    await desk.apply(earlier)  # a redelivered confirmation finds nothing pending
    assert desk.spendable == FUNDS


# ── resolutions ──────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("status", "payout", "credited"),
    [("won", 2_500, 2_500), ("void", STAKE, STAKE), ("lost", 0, 0)],
)
async def test_a_resolution_credits_its_payout_or_refund(
    desk: Desk, status: str, payout: int, credited: int
) -> None:
    assert (await desk.admit()).ok
    await desk.apply(BetConfirmed(bet=bet(status="confirmed")))
    resolved = bet(status=status, payout=payout, resolved_at=NOW + 10_000)
    await desk.apply(BetResolved(bet=resolved))
    assert desk.spendable == FUNDS - STAKE + credited


class CreditLog(InMemoryHotState):
    """Remembers every credit as ledger-sync sent it."""

    def __init__(self) -> None:
        super().__init__(30_000, 1_000.0, 1_000)
        self.credits: list[tuple[str, int, int | None]] = []

    async def credit(self, address: str, amount: int, *, entry_id: int | None = None) -> None:
        self.credits.append((address, amount, entry_id))
        await super().credit(address, amount, entry_id=entry_id)


async def test_every_credit_carries_the_entry_id_of_its_ledger_row() -> None:
    # A Redis balance seeded from a ledger read that already held the row skips it by this id.
    hot = CreditLog()
    won = bet(status="won", payout=2_500, resolved_at=NOW + 10_000)
    await ledger_sync.apply(hot, PendingBets(), BetResolved(bet=won, entry_id=41))
    deposit = msgspec.structs.replace(entry("deposit", 700), entry_id=42)
    await ledger_sync.apply(hot, PendingBets(), EntryPosted(ref="r1", entry=deposit))
    adjustment = msgspec.structs.replace(entry("adjustment", -400), entry_id=43)
    await ledger_sync.apply(hot, PendingBets(), EntryPosted(ref="r1", entry=adjustment))
    assert hot.credits == [(ALICE, 2_500, 41), (ALICE, 700, 42), (ALICE, -400, 43)]


# ── deposits, credits, withdrawals ───────────────────────────────────────────────────────────


@pytest.mark.parametrize(("kind", "amount"), [("deposit", 700), ("adjustment", 300)])
async def test_a_posted_deposit_or_credit_becomes_spendable(
    desk: Desk, kind: str, amount: int
) -> None:
    await desk.apply(EntryPosted(ref="r1", entry=entry(kind, amount)))
    assert desk.spendable == FUNDS + amount


async def test_a_negative_adjustment_lowers_the_hot_balance(desk: Desk) -> None:
    await desk.apply(EntryPosted(ref="r1", entry=entry("adjustment", -400)))
    assert desk.spendable == FUNDS - 400


async def test_withdrawals_refusals_and_balance_events_move_nothing(desk: Desk) -> None:
    # A withdrawal's hold was taken at admission and is now the ledger's debit.
    assert await desk.hot.admit_withdrawal(ALICE, "w1", 500, NOW) == ADMITTED
    await desk.apply(EntryPosted(ref="w1", entry=entry("withdrawal", -500, ref="w1")))
    await desk.apply(EntryPosted(ref="d9", entry=None, error="amount_out_of_range"))
    await desk.apply(BalanceChanged(address=ALICE, available=1, locked=2, at=NOW))
    assert desk.spendable == FUNDS - 500


# ── the actor loop ───────────────────────────────────────────────────────────────────────────


class FlakyHotState(InMemoryHotState):
    """Unavailable for the first `failures` credits."""

    def __init__(self, failures: int) -> None:
        super().__init__(30_000, 1_000.0, 1_000)
        self.failures = failures
        self.rebuilt: list[dict[str, int]] = []

    async def credit(self, address: str, amount: int, *, entry_id: int | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise HotStateUnavailable("no answer")
        await super().credit(address, amount, entry_id=entry_id)

    async def rebuild(self, balances: Mapping[str, int]) -> None:
        self.rebuilt.append(dict(balances))
        await super().rebuild(balances)


def deposit_posted(ref: str, amount: int) -> EntryPosted:
    return EntryPosted(ref=ref, entry=entry("deposit", amount, ref=ref))


def redis_errors() -> float:
    return REGISTRY.get_sample_value("tap_redis_errors_total") or 0.0


async def test_an_unreachable_hot_state_skips_that_update_and_keeps_following(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fanout = CommittedFanout()
    hot = FlakyHotState(failures=1)
    before = redis_errors()

    async def never() -> None:
        raise AssertionError("no lag here, no rebuild")

    async with trio.open_nursery() as nursery:
        await nursery.start(ledger_sync.run, fanout, hot, PendingBets(), never)
        fanout.publish([deposit_posted("d1", 100), deposit_posted("d2", 20)])
        fanout.close()
    assert hot.spendable(ALICE) == 20  # the skipped credit leaves the balance lower, not higher
    assert redis_errors() == before + 1


async def test_a_lagging_subscriber_rebuilds_from_the_ledger_and_resubscribes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_sync, "CAPACITY", 4)
    fanout = CommittedFanout()
    hot = FlakyHotState(failures=0)
    rebuilt = trio.Event()

    async def rebuild() -> None:
        await hot.rebuild({ALICE: 5_000})  # what the ledger says
        rebuilt.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(ledger_sync.run, fanout, hot, PendingBets(), rebuild)
        # Ten events at once overflow a 4-deep subscription (one more goes straight to the
        # waiting actor): it is dropped.
        fanout.publish([deposit_posted(f"d{i}", 1) for i in range(10)])
        with trio.fail_after(5):
            await rebuilt.wait()
        fanout.publish([deposit_posted("after", 30)])  # reaches the new subscription
        fanout.close()
    assert hot.rebuilt == [{ALICE: 5_000}]
    assert hot.spendable(ALICE) == 5_030
    assert fanout.dropped == 1


# ── resync after a lag (issue 9, defect 9) ───────────────────────────────────────────────────


async def test_a_resync_that_meets_redis_down_is_retried_until_it_succeeds(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`await rebuild()` after a lag used to be unguarded: Redis down then ended the actor, and
    with it the process. Now the resync is retried with backoff, and the actor follows on."""
    monkeypatch.setattr(ledger_sync, "CAPACITY", 4)
    fanout = CommittedFanout()
    hot = FlakyHotState(failures=0)
    attempts: list[float] = []
    rebuilt = trio.Event()

    async def rebuild() -> None:
        attempts.append(trio.current_time())
        if len(attempts) <= 3:
            raise HotStateUnavailable("Redis is down")
        await hot.rebuild({ALICE: 5_000})
        rebuilt.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(ledger_sync.run, fanout, hot, PendingBets(), rebuild)
        fanout.publish([deposit_posted(f"d{i}", 1) for i in range(10)])  # overflows: a lag
        with trio.fail_after(60):
            await rebuilt.wait()
        fanout.publish([deposit_posted("after", 30)])
        fanout.close()
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps == sorted(gaps) and gaps[0] >= 1.0  # backing off, not spinning
    assert hot.spendable(ALICE) == 5_030


async def test_a_resync_drops_the_pending_bets_whose_verdict_was_missed(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`BetConfirmed` events lost in a lag used to leave their bets pending forever (GET kept
    answering `pending`; every in-memory rebuild subtracted their stakes again). The resync
    reads the ledger's verdicts: decided bets leave pending (a rejected one frees its cell), a
    bet the ledger never stored, long after its 202, too; a fresh one in flight stays."""
    monkeypatch.setattr(ledger_sync, "CAPACITY", 4)
    d = Desk()
    await d.fund()
    for nonce, cell in (("conf", CELL), ("rej", OTHER_CELL), ("lost", "BTC-USD:100:9")):
        assert (await d.admit(nonce, cell, at=NOW - 120_000)).ok
    assert (await d.admit("fresh", "BTC-USD:100:10", at=NOW)).ok
    ledger = {
        "bet-conf": bet("conf", status="confirmed"),
        "bet-rej": bet("rej", cell_id=OTHER_CELL, status="rejected", reason="insufficient_funds"),
    }
    asked: list[str] = []

    async def committed_bets(ids: list[str]) -> dict[str, Bet]:
        asked.extend(ids)
        return {i: ledger[i] for i in ids if i in ledger}

    rebuilt = trio.Event()

    async def rebuild() -> None:  # the supervisor's in-memory rebuild: ledger minus pending holds
        held = sum(b.amount for b in d.pending.by_id.values())
        await d.hot.rebuild({ALICE: FUNDS - STAKE - held})  # the ledger holds bet-conf's stake
        rebuilt.set()

    fanout = CommittedFanout()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                ledger_sync.run,
                fanout,
                d.hot,
                d.pending,
                rebuild,
                committed_bets=committed_bets,
                now_ms=lambda: NOW,
            )
        )
        fanout.publish([deposit_posted(f"d{i}", 0) for i in range(10)])  # a lag
        with trio.fail_after(5):
            await rebuilt.wait()
        fanout.close()
    assert sorted(asked) == ["bet-conf", "bet-fresh", "bet-lost", "bet-rej"]
    assert list(d.pending.by_id) == ["bet-fresh"]
    assert d.spendable == FUNDS - 2 * STAKE  # bet-conf's stake (ledger) and bet-fresh's hold
    # The rejected bet's cell is free again; the confirmed one's is not.
    assert (await d.hot.admit_bet(ALICE, "again1", OTHER_CELL, 1, NOW)).ok
    assert (await d.hot.admit_bet(ALICE, "again2", CELL, 1, NOW)).reason == "duplicate_cell_bet"
