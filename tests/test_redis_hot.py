"""What only the Redis hot state has: lazy seeding of unknown balances, the two-phase rebuild that
keeps other edges' reservations, Cluster-safe keys, script reloading, the breaker override over
pub/sub, and requests abandoned by their callers never reaching Redis.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis
import trio
from redis.crc import key_slot
from trio.testing import wait_all_tasks_blocked

from actors import breaker_override, ledger_sync
from actors.redis_gateway import open_redis_hot_state
from tap.config import Config
from tap.hotstate import Admit
from tap.messages import (
    BetConfirmed,
    BetResolved,
    BreakerMode,
    Committed,
    Deposit,
    EntryPosted,
    Outcome,
    Settle,
    WriterRequest,
)
from tap.pending import PendingBets
from tap.store import connect, read, write
from tap.store.redis_hot import RedisHotState, override_channel
from tap.store.redis_link import RedisCommand
from tests.builders import placed_bet
from tests.redis_fixtures import (
    ThrowawayRedis,
    hot_config,
    redis_config,
    redis_prefix,
    redis_url,
    throwaway_redis,
)

__all__ = ["redis_config", "redis_prefix", "redis_url", "throwaway_redis"]

T0 = 1_732_290_000_000
A = "0x00000000000000000000000000000000000000aa"
B = "0x00000000000000000000000000000000000000bb"
WAIT_S = 5  # bounds every wait on a real server or thread; never a measured time


def nonce(i: int) -> str:
    return f"nonce-{i:016d}"


def cell(i: int) -> str:
    return f"BTC-USD:{346458012 + i}:10012"


async def keys_under(url: str, prefix: str) -> list[str]:
    def scan() -> list[str]:
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            return list(client.scan_iter(match=f"{prefix}:*"))
        finally:
            client.close()

    return await trio.to_thread.run_sync(scan)


async def pttl(url: str, key: str) -> int:
    def read() -> int:
        client = redis.Redis.from_url(url)
        try:
            return int(client.pttl(key))
        finally:
            client.close()

    return await trio.to_thread.run_sync(read)


# ── unknown balances are seeded from the ledger ─────────────────────────────────────────────


async def test_unknown_balance_is_seeded_once_and_takes_one_rate_token(
    redis_url: str, redis_prefix: str
) -> None:
    cfg = hot_config(redis_url, redis_prefix, burst=1)  # a second token taken would refuse
    reads: list[str] = []

    async def ledger_available(address: str) -> tuple[int, int]:
        reads.append(address)
        return 500, 7

    async with open_redis_hot_state(cfg, balance_source=ledger_available) as hot:
        await hot.credit(A, 1_000)  # unknown: the ledger read that seeds it counts this money
        assert await hot.spendable(A) is None
        assert (await hot.admit_bet(A, nonce(1), cell(1), 200, T0)).ok
        assert reads == [A]
        assert await hot.spendable(A) == 300
        await hot.credit(A, 50)
        assert await hot.spendable(A) == 350


async def test_seed_never_overwrites_a_balance_that_is_there(redis_config: Config) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        assert await hot.seed_if_absent(A, 100, through=3)
        assert not await hot.seed_if_absent(A, 999, through=9)
        assert await hot.spendable(A) == 100
        assert await hot.position(A) == 3


# ── the two-phase rebuild ───────────────────────────────────────────────────────────────────


async def test_rebuild_keeps_reservations_made_while_the_ledger_is_read(
    redis_config: Config,
) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)
        assert (await hot.admit_bet(A, nonce(1), cell(1), 100, T0)).ok  # committed before read
        assert (await hot.admit_bet(A, nonce(2), cell(2), 70, T0)).ok  # refused during read

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            # Another edge keeps working while this one reads the ledger:
            assert (await hot.admit_bet(A, nonce(3), cell(3), 200, T0)).ok  # pending at apply
            assert (await hot.admit_bet(A, nonce(4), cell(4), 50, T0)).ok
            await hot.release(A, 50, cell_id=cell(4))  # refused by the writer
            await hot.release(A, 70, cell_id=cell(2))  # the pre-mark one, refused
            return {A: (900, 0)}  # the ledger: 1000 deposited, bet 1 committed

        counts = await hot.rebuild_from(read_ledger)
        assert counts["marked"] == 1 and counts["applied"] == 1
        assert await hot.spendable(A) == 700  # 900 available − bet 3 still on its way


async def test_a_release_after_a_rebuild_does_not_give_the_hold_back_twice(
    redis_config: Config,
) -> None:
    """Issue 9 defect 9: a reservation made before a rebuild, refused by the writer after it.
    The rebuild (ledger read + journal since its mark) already holds the money without that
    reservation; `release.lua` used to add the amount once more, so the hot balance read above
    the ledger. Releases of reservations made after the mark, or after the rebuild, still
    count, and a second rebuild changes nothing."""
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)
        assert (await hot.admit_bet(A, nonce(1), cell(1), 100, T0)).ok  # before the rebuild

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            assert (await hot.admit_bet(A, nonce(2), cell(2), 30, T0)).ok  # during it
            return {A: (1_000, 0)}  # neither bet committed: the ledger still has 1000

        await hot.rebuild_from(read_ledger)
        assert await hot.spendable(A) == 970  # bet 1's hold dropped, bet 2's kept
        assert (await hot.admit_bet(A, nonce(3), cell(3), 20, T0)).ok  # after it
        assert await hot.spendable(A) == 950

        await hot.release(A, 100, cell_id=cell(1))  # the writer refused bet 1
        assert await hot.spendable(A) == 950  # already given back by the rebuild
        await hot.release(A, 30, cell_id=cell(2))  # and bet 2
        await hot.release(A, 20, cell_id=cell(3), nonce=nonce(3))  # and bet 3 (overloaded)
        assert await hot.spendable(A) == 1_000  # == the ledger

        async def read_again() -> Mapping[str, tuple[int, int]]:
            return {A: (1_000, 0)}

        await hot.rebuild_from(read_again)
        assert await hot.spendable(A) == 1_000


async def test_a_withdrawal_hold_released_after_a_rebuild_is_not_given_back_twice(
    redis_config: Config,
) -> None:
    """The same for releases that keep their nonce burned (a refused withdrawal, a replay the
    writer answered with the earlier bet): `held_by` names the nonce the era is read from."""
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)
        assert (await hot.admit_withdrawal(A, nonce(1), 300, T0)).ok
        assert (await hot.admit_bet(A, nonce(2), cell(2), 100, T0)).ok

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            return {A: (1_000, 0)}  # neither committed

        await hot.rebuild_from(read_ledger)
        assert await hot.spendable(A) == 1_000
        await hot.release(A, 300, held_by=nonce(1))  # the writer refused the withdrawal
        await hot.release(A, 100, held_by=nonce(2))  # a replay answered with an earlier bet
        assert await hot.spendable(A) == 1_000
        assert await hot.nonce_seen(A, nonce(1)) and await hot.nonce_seen(A, nonce(2))
        # Without a rebuild in between, the same releases give the holds back.
        assert (await hot.admit_withdrawal(A, nonce(3), 300, T0)).ok
        await hot.release(A, 300, held_by=nonce(3))
        assert await hot.spendable(A) == 1_000 and await hot.nonce_seen(A, nonce(3))


async def test_credit_during_a_rebuild_is_never_counted_twice(redis_config: Config) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            await hot.credit(A, 300)  # a deposit whose commit the read already holds
            return {A: (1_300, 0)}

        await hot.rebuild_from(read_ledger)
        assert await hot.spendable(A) == 1_300


async def test_negative_credit_during_a_rebuild_is_kept(redis_config: Config) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            await hot.credit(A, -400)  # committed after the read: the read still says 1000
            return {A: (1_000, 0)}

        await hot.rebuild_from(read_ledger)
        assert await hot.spendable(A) == 600


async def test_concurrent_rebuilds_settle_on_the_last_one_marked(redis_config: Config) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)
        await hot.credit(B, 1_000)

        async def inner_read() -> Mapping[str, tuple[int, int]]:
            return {A: (2_000, 0), B: (2_000, 0)}

        async def outer_read() -> Mapping[str, tuple[int, int]]:
            await hot.rebuild_from(inner_read)  # marks, reads and applies inside our window
            assert (await hot.admit_bet(A, nonce(1), cell(1), 10, T0)).ok
            return {A: (5, 0), B: (5, 0)}

        counts = await hot.rebuild_from(outer_read)
        assert counts["skipped"] == 2
        assert await hot.spendable(A) == 1_990
        assert await hot.spendable(B) == 2_000


async def test_rebuild_seeds_ledger_accounts_redis_does_not_have(redis_config: Config) -> None:
    async with open_redis_hot_state(redis_config) as hot:

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            return {A: (42, 6)}

        counts = await hot.rebuild_from(read_ledger)
        assert counts["seeded"] == 1
        assert await hot.spendable(A) == 42
        assert await hot.position(A) == 6


# ── ledger positions: a credit the balance's ledger read already held is not counted again ──

DEPOSIT = 3_000_000
STAKE = 1_000_000


@pytest.fixture
def ledger_file(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """The ledger: a writer connection (commits as the batcher does) and a read-only one."""
    path = tmp_path / "tap.db"
    writer = connect.open_writer(path)
    reader = connect.open_connection(path, read_only=True)
    yield writer, reader
    reader.close()
    writer.close()


def commit(writer: sqlite3.Connection, *requests: WriterRequest) -> list[Committed]:
    return list(write.apply_batch(writer, list(requests), T0))


def late_credit_event(writer: sqlite3.Connection, kind: str) -> Committed:
    """Commit money arriving for A; return the event whose credit ledger-sync has yet to send."""
    [posted, *_] = commit(writer, Deposit(address=A, amount=DEPOSIT, ref="d1", at=T0))
    assert isinstance(posted, EntryPosted) and posted.entry is not None
    if kind == "deposit":
        return posted
    commit(writer, placed_bet(1, A, STAKE))
    won = Outcome(
        bet_id="bet-1",
        address=A,
        status="won",
        amount=STAKE,
        payout=0,
        decided_by=None,
        reason="touch",
        at=T0,
    )
    [resolved, *_] = commit(writer, Settle(outcomes=(won,)))
    assert isinstance(resolved, BetResolved) and (resolved.bet.payout or 0) > STAKE
    return resolved


@pytest.mark.parametrize("kind", ["deposit", "payout"])
async def test_a_credit_sent_after_a_seed_that_already_read_it_is_not_counted_twice(
    redis_url: str,
    redis_prefix: str,
    ledger_file: tuple[sqlite3.Connection, sqlite3.Connection],
    kind: str,
) -> None:
    # The race: money committed; before ledger-sync sends its credit, an admission (this edge's
    # or another's) finds no hot balance and seeds it from the ledger, which already holds that
    # money; then the credit arrives. Counted twice, the hot balance would read high.
    writer, reader = ledger_file
    late = late_credit_event(writer, kind)

    async def ledger_available(address: str) -> tuple[int, int]:
        return read.available_through(reader, address)

    cfg = hot_config(redis_url, redis_prefix)
    pending = PendingBets()
    async with open_redis_hot_state(cfg, balance_source=ledger_available) as hot:
        assert (await hot.admit_bet(A, "nonce-000000000002", cell(2), STAKE, T0)).ok
        await ledger_sync.apply(hot, pending, late)  # the credit, a moment late
        [confirmed, *_] = commit(writer, placed_bet(2, A, STAKE))
        assert isinstance(confirmed, BetConfirmed)
        await ledger_sync.apply(hot, pending, confirmed)
        assert await hot.spendable(A) == read.get_balance(reader, A).available


async def test_a_credit_past_the_seeded_position_is_applied_in_whatever_order_it_comes(
    redis_config: Config,
) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        assert await hot.seed_if_absent(A, 1_000, through=10)  # the read held A's entries ≤ 10
        # Two edges commit into one ledger: entry 12's credit may reach Redis before 11's.
        await hot.credit(A, 5, entry_id=12)
        await hot.credit(A, 7, entry_id=11)
        assert await hot.spendable(A) == 1_012
        await hot.credit(A, 3, entry_id=10)  # held by the read
        await hot.credit(A, -4, entry_id=9)  # held by the read: not taken off twice either
        assert await hot.spendable(A) == 1_012
        await hot.credit(A, -4, entry_id=13)
        await hot.credit(A, 1)  # no entry_id (the protocol's older form): always applied
        assert await hot.spendable(A) == 1_009
        assert await hot.position(A) == 10  # credits never move it


async def test_a_rebuild_sets_the_position_of_its_own_read(redis_config: Config) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        await hot.seed_if_absent(A, 1_000, through=20)

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            return {A: (900, 15)}  # read before entries 16..20 committed

        await hot.rebuild_from(read_ledger)
        assert await hot.position(A) == 15
        await hot.credit(A, 40, entry_id=16)  # not in the read the balance now comes from
        await hot.credit(A, 2, entry_id=15)
        assert await hot.spendable(A) == 940
        await hot.rebuild({A: 50})  # no positions: every later credit applies
        assert await hot.position(A) == 0


async def test_a_negative_credit_the_seed_held_is_still_kept_by_an_older_rebuild_read(
    redis_config: Config,
) -> None:
    cfg = redis_config

    async def ledger_available(address: str) -> tuple[int, int]:
        return 600, 12  # 1000 deposited (entry 11), −400 adjusted (entry 12)

    async with open_redis_hot_state(cfg, balance_source=ledger_available) as hot:

        async def read_ledger() -> Mapping[str, tuple[int, int]]:
            # After the mark, before this read is applied: an admission seeds A from a newer
            # read, then the adjustment's credit arrives, already held by that seed.
            assert (await hot.admit_bet(A, nonce(1), cell(1), 100, T0)).ok
            await hot.credit(A, -400, entry_id=12)
            assert await hot.spendable(A) == 500
            return {A: (1_000, 11)}  # read before the adjustment committed

        await hot.rebuild_from(read_ledger)
        # 1000 − 400 − the pending stake: the adjustment is in the journal, though not applied
        # twice to the seeded balance (without it the rebuild would read 900: high).
        assert await hot.spendable(A) == 500


# ── key layout ──────────────────────────────────────────────────────────────────────────────


async def test_every_key_of_an_admission_is_in_its_address_slot(
    redis_config: Config, redis_url: str, redis_prefix: str
) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)
        assert (await hot.admit_bet(A, nonce(1), cell(1), 10, T0)).ok
        assert (await hot.admit_withdrawal(A, nonce(2), 10, T0)).ok
    keys = await keys_under(redis_url, redis_prefix)
    mine = [k for k in keys if f"{{{A}}}" in k]
    assert len(mine) == 5  # balance, bucket, two nonces, one cell marker
    assert {key_slot(k.encode()) for k in mine} == {key_slot(A.encode())}


async def test_nonce_and_cell_memories_have_their_configured_lengths(
    redis_config: Config, redis_url: str, redis_prefix: str
) -> None:
    async with open_redis_hot_state(redis_config) as hot:
        await hot.credit(A, 1_000)
        assert (await hot.admit_bet(A, nonce(1), cell(1), 10, T0)).ok
    nonce_ttl = await pttl(redis_url, f"{redis_prefix}:{{{A}}}:n:{nonce(1)}")
    cell_ttl = await pttl(redis_url, f"{redis_prefix}:{{{A}}}:c:{cell(1)}")
    skew = redis_config.auth.max_skew_ms
    assert skew < nonce_ttl <= 2 * skew  # set to 2 × max_skew_ms; a little has passed since
    market = redis_config.markets[0]
    assert 0 < cell_ttl <= (market.columns_ahead + 1) * market.column_ms


async def test_scripts_are_reloaded_after_the_server_forgets_them(
    throwaway_redis: ThrowawayRedis,
) -> None:
    cfg = hot_config(throwaway_redis.url, "tap")
    async with open_redis_hot_state(cfg) as hot:
        await hot.credit(A, 1_000)
        await trio.to_thread.run_sync(lambda: throwaway_redis.client().script_flush())
        assert (await hot.admit_bet(A, nonce(1), cell(1), 10, T0)).ok
        assert await hot.spendable(A) == 990


# ── callers that give up ────────────────────────────────────────────────────────────────────


def patient_config(config: Config) -> Config:
    """Deadlines far beyond these tests' gates, so only the gates decide what happens when."""
    return hot_config(
        config.redis.url, config.redis.prefix, request_timeout_ms=5_000, socket_timeout_ms=5_000
    )


class Gate:
    """Holds the gateway's current round trip open: it sends `BLPOP`, which the server answers
    only when the test pushes. Deterministic "a pipeline is in flight" without timing."""

    def __init__(self, hot: RedisHotState, url: str, name: str) -> None:
        self.hot, self.url, self.key = hot, url, f"{hot.prefix}:gate:{name}"
        self.passed = trio.Event()

    async def hold(self) -> None:
        await self.hot.gateway.call(RedisCommand(("BLPOP", self.key, 4)))
        self.passed.set()

    async def open(self) -> None:
        def push() -> None:
            client = redis.Redis.from_url(self.url)
            try:
                client.rpush(self.key, "go")
            finally:
                client.close()

        await trio.to_thread.run_sync(push)


async def test_a_request_abandoned_while_queued_is_never_sent(
    redis_config: Config, redis_url: str
) -> None:
    async with open_redis_hot_state(patient_config(redis_config)) as hot:
        await hot.credit(A, 1_000)
        gate = Gate(hot, redis_url, "queued")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.hold)
            await wait_all_tasks_blocked()  # the BLPOP pipeline is in flight
            caller = trio.CancelScope()

            async def place() -> None:
                with caller:
                    await hot.admit_bet(A, nonce(1), cell(1), 100, T0)

            nursery.start_soon(place)
            await wait_all_tasks_blocked()  # the admission waits in the queue
            caller.cancel()
            await wait_all_tasks_blocked()
            await gate.open()
        assert not await hot.nonce_seen(A, nonce(1))
        assert await hot.spendable(A) == 1_000


async def test_an_admission_answered_after_its_caller_left_is_taken_back(
    redis_config: Config, redis_url: str
) -> None:
    async with open_redis_hot_state(patient_config(redis_config)) as hot:
        await hot.credit(A, 1_000)
        first, second = Gate(hot, redis_url, "first"), Gate(hot, redis_url, "second")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.hold)
            await wait_all_tasks_blocked()
            caller = trio.CancelScope()
            outcome: list[Admit] = []

            async def place() -> None:
                with caller:
                    outcome.append(await hot.admit_bet(A, nonce(1), cell(1), 100, T0))

            nursery.start_soon(place)
            await wait_all_tasks_blocked()
            nursery.start_soon(second.hold)  # queued behind the admission: one pipeline
            await wait_all_tasks_blocked()
            await first.open()
            await first.passed.wait()
            await wait_all_tasks_blocked()  # [admission, BLPOP second] is in flight
            caller.cancel()
            await wait_all_tasks_blocked()
            await second.open()
        assert outcome == []  # the caller never heard the answer...
        await hot.ping()  # (the undo was queued before this answer came back)
        assert not await hot.nonce_seen(A, nonce(1))  # ...so nothing of it stays
        assert await hot.spendable(A) == 1_000


async def test_many_concurrent_admissions_share_round_trips(redis_config: Config) -> None:
    from prometheus_client import REGISTRY

    def round_trips() -> float:
        return REGISTRY.get_sample_value("tap_redis_round_trips_total") or 0.0

    cfg = hot_config(
        redis_config.redis.url, redis_config.redis.prefix, rate_per_s=1000.0, burst=1000
    )
    async with open_redis_hot_state(cfg) as hot:
        await hot.credit(A, 10_000)
        before = round_trips()
        results = []

        async def place(i: int) -> None:
            results.append(await hot.admit_bet(A, nonce(i), cell(i), 1, T0))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(place, i)
        assert all(r.ok for r in results) and len(results) == 200
        assert round_trips() - before < 200  # pipelined: many admissions per round trip


# ── breaker override over pub/sub ───────────────────────────────────────────────────────────


async def test_published_override_reaches_every_subscriber(redis_config: Config) -> None:
    send, receive = trio.open_memory_channel[BreakerMode](4)  # a test's small inbox
    async with open_redis_hot_state(redis_config) as hot, trio.open_nursery() as nursery:
        subscribed = await nursery.start(breaker_override.run, redis_config.redis, send)
        assert await trio.to_thread.run_sync(subscribed.wait, WAIT_S)
        with trio.fail_after(WAIT_S):
            assert await hot.publish_override("open") == 1
            assert await receive.receive() == "open"
            channel = override_channel(redis_config.redis.prefix)
            await hot.gateway.call(RedisCommand(("PUBLISH", channel, "sideways")))
            await hot.publish_override("auto")
            assert await receive.receive() == "auto"  # the bad payload was skipped
        nursery.cancel_scope.cancel()


async def test_late_subscriber_gets_the_current_override(redis_config: Config) -> None:
    send, receive = trio.open_memory_channel[BreakerMode](4)  # a test's small inbox
    async with open_redis_hot_state(redis_config) as hot, trio.open_nursery() as nursery:
        assert await hot.publish_override("closed") == 0  # nobody listening yet
        await nursery.start(breaker_override.run, redis_config.redis, send)
        with trio.fail_after(WAIT_S):
            assert await receive.receive() == "closed"
        nursery.cancel_scope.cancel()


async def test_override_reaches_every_market_breaker(redis_config: Config) -> None:
    inboxes = [trio.open_memory_channel[BreakerMode](4) for _ in range(2)]  # a test's inboxes
    async with open_redis_hot_state(redis_config) as hot, trio.open_nursery() as nursery:
        subscribed = await nursery.start(
            breaker_override.run, redis_config.redis, [send for send, _ in inboxes]
        )
        assert await trio.to_thread.run_sync(subscribed.wait, WAIT_S)
        with trio.fail_after(WAIT_S):
            await hot.publish_override("open")
            assert [await receive.receive() for _, receive in inboxes] == ["open", "open"]
        nursery.cancel_scope.cancel()
