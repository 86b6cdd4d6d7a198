"""The batcher actor: one writer, adaptive batches, busy retries, draining on close."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio
import trio.testing
from prometheus_client import REGISTRY

from actors import batcher
from actors.fanout import CommittedFanout
from tap import ledger
from tap.config import BatcherConfig
from tap.messages import (
    BalanceChanged,
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    Deposit,
    EntryPosted,
    Outcome,
    PlaceBet,
    Settle,
    WriterRequest,
)
from tap.runtime.clock import Clock
from tap.store import connect, read, write
from tap.store.integrity import integrity_check
from tests.builders import placed_bet

NOW = 1_732_290_000_000


def bet(n: int, *, address: str = "0xaa", amount: int = 1_000) -> PlaceBet:
    return placed_bet(n, address, amount, multiplier_bps=20_000)


def deposit(address: str, amount: int, ref: str | None = None) -> Deposit:
    return Deposit(address=address, amount=amount, ref=ref or f"dep-{address}", at=NOW)


def lose(bet_id: str) -> Settle:
    return Settle(
        outcomes=(
            Outcome(
                bet_id=bet_id,
                address="0xaa",
                status="lost",
                amount=1_000,
                payout=0,
                decided_by=None,
                reason="column_end",
                at=NOW,
            ),
        )
    )


def retries() -> float:
    return REGISTRY.get_sample_value("tap_batch_retries_total") or 0.0


class Rig:
    """A batcher on a real file, its input channel, and every committed batch it announced."""

    def __init__(self, path: Path, cfg: BatcherConfig, *, early: bool = False) -> None:
        self.path = path
        self.cfg = cfg
        self.early = early  # close a batch early when somebody waits on it (as tap serve does)
        self.send, self.receive = trio.open_memory_channel[WriterRequest](cfg.queue_size)
        self.fanout = CommittedFanout()
        self.batches: list[list[Committed]] = []

    def record(self, events: Sequence[Committed]) -> None:
        self.batches.append(list(events))
        self.fanout.publish(events)

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(
            partial(
                batcher.run,
                self.cfg,
                Clock(epoch_ms=NOW),
                self.receive,
                self.record,
                self.path,
                awaited=batcher.answered_after_commit if self.early else None,
            )
        )

    def events(self) -> list[Committed]:
        return [e for b in self.batches for e in b]

    async def commit(self, request: PlaceBet | Deposit) -> Committed:
        """Hand one request over and wait for its answer (what `Prefer: wait` does)."""
        if isinstance(request, PlaceBet):
            with self.fanout.expect_bet(request.bet_id) as answer:
                self.send.send_nowait(request)
                return await answer.wait()
        with self.fanout.expect_entry(request.ref) as answer:
            self.send.send_nowait(request)
            return await answer.wait()

    def reader(self) -> sqlite3.Connection:
        return connect.open_connection(self.path, read_only=True)


def config(**overrides: int) -> BatcherConfig:
    values = {"max_batch": 64, "max_wait_ms": 2, "queue_size": 4096, "busy_timeout_ms": 1}
    values.update(overrides)
    return BatcherConfig(**values)


async def test_a_thousand_concurrent_bets_confirm_exactly_as_many_as_the_balance_covers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    k = 137
    rig = Rig(tmp_path / "tap.db", config())
    answers: list[Committed] = []
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.commit(deposit("0xaa", k * 1_000))

        async def place(n: int) -> None:
            answers.append(await rig.commit(bet(n)))

        async with trio.open_nursery() as players:
            for n in range(1_000):
                players.start_soon(place, n)
        rig.send.close()

    confirmed = [a for a in answers if isinstance(a, BetConfirmed)]
    rejected = [a for a in answers if isinstance(a, BetRejected)]
    assert len(confirmed) == k
    assert len(rejected) == 1_000 - k
    assert {r.reason for r in rejected} == {"insufficient_funds"}
    balances = [e for e in rig.events() if isinstance(e, BalanceChanged)]
    assert all(b.available >= 0 and b.locked >= 0 for b in balances)
    assert len(rig.batches) > 2  # they really were spread over several batches
    reader = rig.reader()
    assert read.get_balance(reader, "0xaa") == ledger.Account(0, k * 1_000)
    assert integrity_check(reader) == []


async def test_a_competing_write_lock_is_retried_until_it_is_released_and_nothing_is_lost(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path / "tap.db", config(busy_retries=100_000, retry_backoff_ms=5))
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        holder = connect.open_connection(rig.path)
        holder.execute("BEGIN IMMEDIATE")  # e.g. a backup or the archiver, holding the lock
        before = retries()
        rig.send.send_nowait(deposit("0xaa", 50_000))
        for n in range(50):
            rig.send.send_nowait(bet(n))
        while retries() < before + 5:  # noqa: ASYNC110 (a Prometheus counter has no event)
            await trio.sleep(0.01)
        assert rig.batches == []  # nothing announced while nothing could commit
        holder.execute("COMMIT")
        rig.send.close()
    assert sum(isinstance(e, BetConfirmed) for e in rig.events()) == 50
    reader = rig.reader()
    assert read.get_balance(reader, "0xaa") == ledger.Account(0, 50_000)
    assert integrity_check(reader) == []


async def test_when_the_lock_never_frees_requests_are_refused_and_settlements_kept(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path / "tap.db", config(busy_retries=3, retry_backoff_ms=5))
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.commit(deposit("0xaa", 5_000))
        await rig.commit(bet(1))
        holder = connect.open_connection(rig.path)
        holder.execute("BEGIN IMMEDIATE")
        resolutions = rig.fanout.subscribe(100, "test")
        rig.send.send_nowait(lose("bet-1"))
        refused = await rig.commit(bet(2))
        assert isinstance(refused, BetRejected) and refused.reason == write.STORE_BUSY
        holder.execute("ROLLBACK")
        # The settlement was carried into the next batch and lands without any new request.
        async for event in resolutions:
            if isinstance(event, BetResolved):
                break
        # The refused bet left nothing behind: the same nonce may be sent again.
        assert isinstance(await rig.commit(bet(2)), BetConfirmed)
        rig.send.close()
    reader = rig.reader()
    assert read.get_balance(reader, "0xaa") == ledger.Account(3_000, 1_000)
    assert integrity_check(reader) == []


async def test_a_batch_is_flushed_at_max_batch_items(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path / "tap.db", config(max_batch=4, max_wait_ms=1_000))
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        for n in range(10):
            rig.send.send_nowait(deposit(f"0x{n:02d}", 1))
        rig.send.close()
    sizes = [sum(isinstance(e, EntryPosted) for e in b) for b in rig.batches]
    assert sizes == [4, 4, 2]


async def test_a_batch_is_flushed_max_wait_after_its_first_item_and_never_when_idle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path / "tap.db", config(max_batch=100, max_wait_ms=50))
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await trio.sleep(10)
        assert rig.batches == []  # idle: no empty commits
        rig.send.send_nowait(deposit("0x01", 1))
        await trio.sleep(0.020)
        assert rig.batches == []  # still inside the first item's max_wait
        await rig.commit(deposit("0x02", 1))
        assert len(rig.batches) == 1  # both went in one batch
        rig.send.send_nowait(deposit("0x03", 1))
        rig.send.close()
    sizes = [sum(isinstance(e, EntryPosted) for e in b) for b in rig.batches]
    assert sizes == [2, 1]


async def test_a_bet_somebody_waits_on_commits_without_waiting_out_the_window(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path / "tap.db", config(max_batch=100, max_wait_ms=1_000), early=True)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.commit(deposit("0xaa", 5_000))
        started = trio.current_time()
        answer = await rig.commit(bet(1))
        assert isinstance(answer, BetConfirmed)
        assert trio.current_time() - started < 0.5  # not the 1 s window (mock clock: ~0)
        # Nobody waits on a settlement: it still takes the whole window, in company.
        resolutions = rig.fanout.subscribe(100, "test")
        sent = trio.current_time()
        rig.send.send_nowait(lose("bet-1"))
        async for event in resolutions:
            if isinstance(event, BetResolved):
                break
        assert trio.current_time() - sent >= 1.0
        rig.send.close()


async def test_bets_answered_early_are_committed_in_order_and_durable_when_answered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Many players at once, each waiting on its bet: every answer comes after its commit (the
    bet is in the file when its waiter wakes), nothing is lost, and the writer's order is the
    order the bets were handed over."""
    rig = Rig(tmp_path / "tap.db", config(max_batch=32, max_wait_ms=1_000), early=True)
    reader_path = rig.path
    handed: list[str] = []
    answered: list[str] = []
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.commit(deposit("0xaa", 10**9))
        reader = connect.open_connection(reader_path, read_only=True)

        async def player(n: int) -> None:
            await trio.sleep(n % 7 * 0.001)  # arrivals spread over a few scheduling rounds
            request = bet(n)
            with rig.fanout.expect_bet(request.bet_id) as waiter:
                rig.send.send_nowait(request)
                handed.append(request.bet_id)
                answer = await waiter.wait()
            assert isinstance(answer, BetConfirmed)
            row = reader.execute(
                "SELECT status FROM bets WHERE bet_id = ?", (request.bet_id,)
            ).fetchone()
            assert row == ("confirmed",)  # durable before the answer
            answered.append(request.bet_id)

        async with trio.open_nursery() as players:
            for n in range(300):
                players.start_soon(player, n)
        rig.send.close()
    committed = [e.bet.bet_id for e in rig.events() if isinstance(e, BetConfirmed)]
    assert committed == handed
    assert sorted(answered) == sorted(handed)
    sizes = [sum(isinstance(e, BetConfirmed) for e in b) for b in rig.batches]
    assert len(sizes) > 2 and max(sizes) > 1  # batched, and not one commit for everything
    assert integrity_check(rig.reader()) == []


async def test_a_settlement_sent_twice_resolves_the_bet_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path / "tap.db", config())
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.commit(deposit("0xaa", 5_000))
        await rig.commit(bet(1))
        rig.send.send_nowait(lose("bet-1"))
        rig.send.send_nowait(lose("bet-1"))  # same batch
        await trio.sleep(1)
        rig.send.send_nowait(lose("bet-1"))  # a later batch
        rig.send.close()
    assert sum(isinstance(e, BetResolved) for e in rig.events()) == 1
    reader = rig.reader()
    assert read.get_balance(reader, "0xaa") == ledger.Account(4_000, 0)
    assert len(read.ledger_page(reader, "0xaa").items) == 3
    assert integrity_check(reader) == []


async def test_closing_the_channel_drains_commits_and_returns(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig(tmp_path / "tap.db", config(max_batch=16, max_wait_ms=1_000))
    sub = rig.fanout.subscribe(4096, "test")
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        for n in range(100):
            rig.send.send_nowait(deposit(f"0x{n:03d}", 10))
            rig.send.send_nowait(bet(n, address=f"0x{n:03d}", amount=10))
        rig.send.close()  # the run returns only after all 200 are committed
    rig.fanout.close()
    seen = [event async for event in sub]
    assert sum(isinstance(e, BetConfirmed) for e in seen) == 100
    reader = rig.reader()
    assert len(read.open_bets(reader)) == 100
    assert integrity_check(reader) == []
