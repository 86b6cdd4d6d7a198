"""The resolver actor (`actors.resolver`): startup reload, live resolution, writer hand-off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from actors import resolver as resolver_actor
from tap.config import Config
from tap.messages import Bet, Outcome, PlaceBet, Settle, StoreTicks, Tick, WriterRequest
from tap.resolver import BetOutsideHistory
from tap.runtime.clock import Clock

CFG = Config()  # BTC-USD: column 5000 ms, row 1000, max gap 2000 ms
SYMBOL = "BTC-USD"
ADDRESS = "0x" + "ab" * 20


def placed(col: int, row: int, amount: int = 1_000_000, mult: int = 20_000) -> PlaceBet:
    """A bet as the ledger returns it at startup."""
    return PlaceBet(
        bet_id=f"p{col}.{row}",
        address=ADDRESS,
        cell_id=f"{SYMBOL}:{col}:{row}",
        symbol=SYMBOL,
        col=col,
        row=row,
        t_start=col * 5000,
        t_end=(col + 1) * 5000,
        price_lo=row * 1000,
        price_hi=(row + 1) * 1000,
        amount=amount,
        multiplier_bps=mult,
        nonce=f"nonce-{col}-{row}-0123456789",
        accepted_at=0,
        timestamp=0,
        chain_id=31337,
        min_multiplier_bps=0,
        signature="00" * 64,
    )


def confirmed(col: int, row: int, status: str = "confirmed") -> Bet:
    """A bet as the writer's committed stream announces it."""
    return Bet(
        bet_id=f"c{col}.{row}",
        address=ADDRESS,
        cell_id=f"{SYMBOL}:{col}:{row}",
        amount=2_000_000,
        multiplier_bps=30_000,
        nonce=f"nonce-c-{col}-{row}-0123456789",
        status=status,  # type: ignore[arg-type]
        accepted_at=0,
    )


def tick(ts: int, price: int) -> Tick:
    return Tick(symbol=SYMBOL, ts=ts, price=price)


@dataclass
class Rig:
    ticks: trio.MemorySendChannel[Tick]
    bets: trio.MemorySendChannel[Bet | PlaceBet]
    writer: trio.MemoryReceiveChannel[WriterRequest]
    handle: resolver_actor.ResolverHandle
    finished: trio.Event

    def written(self) -> list[WriterRequest]:
        out = []
        while True:
            try:
                out.append(self.writer.receive_nowait())
            except trio.WouldBlock:
                return out


@asynccontextmanager
async def running_resolver(
    *,
    open_bets: Iterable[Bet | PlaceBet] = (),
    last_tick_ts: int | None = None,
    reload: Iterable[Tick] = (),
    writer_room: int = 64,
    prefill_writer: int = 0,
) -> AsyncIterator[Rig]:
    tick_tx, tick_rx = trio.open_memory_channel[Tick](100)  # tests send short scripts
    bet_tx, bet_rx = trio.open_memory_channel[Bet | PlaceBet](100)
    writer_tx, writer_rx = trio.open_memory_channel[WriterRequest](writer_room)
    for _ in range(prefill_writer):  # the edge's bets already fill the writer's queue
        writer_tx.send_nowait(StoreTicks(ticks=()))
    finished = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run_it(task_status: trio.TaskStatus[resolver_actor.ResolverHandle]) -> None:
            await resolver_actor.run(
                CFG,
                Clock(epoch_ms=0),
                tick_rx,
                bet_rx,
                writer_tx,
                open_bets,
                last_tick_ts,
                reload,
                task_status=task_status,
            )
            finished.set()

        handle = await nursery.start(run_it)
        yield Rig(tick_tx, bet_tx, writer_rx, handle, finished)
        nursery.cancel_scope.cancel()


def outcomes_in(requests: list[WriterRequest]) -> list[Outcome]:
    return [o for r in requests if isinstance(r, Settle) for o in r.outcomes]


def ticks_in(requests: list[WriterRequest]) -> list[int]:
    return [t.ts for r in requests if isinstance(r, StoreTicks) for t in r.ticks]


async def test_startup_reload_settles_what_the_stored_ticks_decided_and_keeps_the_rest() -> None:
    reload = [tick(10_000, 40_000), tick(11_000, 50_500), tick(12_500, 40_000)]
    async with running_resolver(
        open_bets=[placed(2, 50), placed(2, 60), placed(3, 50)],
        last_tick_ts=9_500,
        reload=reload,
    ) as rig:
        await trio.testing.wait_all_tasks_blocked()
        written = rig.written()
        [won] = outcomes_in(written)
        assert (won.bet_id, won.status, won.payout) == ("p2.50", "won", 2_000_000)
        assert ticks_in(written) == []  # stored ticks are not stored again
        assert rig.handle.open_bets() == 2

        await rig.ticks.send(tick(14_000, 40_000))
        await rig.ticks.send(tick(15_000, 50_000))  # closes column 2, touches (3, 50)
        await trio.testing.wait_all_tasks_blocked()
        written = rig.written()
        assert ticks_in(written) == [14_000, 15_000]
        assert {(o.bet_id, o.status) for o in outcomes_in(written)} == {
            ("p2.60", "lost"),
            ("p3.50", "won"),
        }
        assert isinstance(written[0], StoreTicks)  # the deciding tick reaches the log first


async def test_reload_that_does_not_cover_an_open_bet_refuses_to_start() -> None:
    with pytest.raises(BaseExceptionGroup) as failure:
        async with running_resolver(open_bets=[placed(2, 50)], last_tick_ts=10_000):
            pass
    assert failure.group_contains(BetOutsideHistory)


async def test_confirmed_bets_from_the_committed_stream_are_resolved_live() -> None:
    async with running_resolver(last_tick_ts=9_000) as rig:
        await rig.bets.send(confirmed(2, 50))
        await rig.bets.send(confirmed(2, 50))  # re-sent after a lag: ignored
        await rig.bets.send(confirmed(2, 51, status="rejected"))  # not a confirmed bet
        await trio.testing.wait_all_tasks_blocked()
        assert rig.handle.open_bets() == 1
        await rig.ticks.send(tick(10_000, 50_700))
        await trio.testing.wait_all_tasks_blocked()
        [won] = outcomes_in(rig.written())
        assert (won.bet_id, won.status, won.payout) == ("c2.50", "won", 6_000_000)


async def test_full_writer_queue_delays_settlements_but_never_drops_them_or_stalls_ticks() -> None:
    async with running_resolver(last_tick_ts=9_000, writer_room=1, prefill_writer=1) as rig:
        for row in (50, 51, 52):
            await rig.bets.send(confirmed(2, row))
        for ts, price in ((10_000, 50_500), (11_000, 51_500), (12_000, 52_500)):
            await rig.ticks.send(tick(ts, price))
        await trio.testing.wait_all_tasks_blocked()
        assert rig.handle.open_bets() == 0  # decided while the writer was full

        got: list[WriterRequest] = []
        while len(outcomes_in(got)) < 3:
            got.append(await rig.writer.receive())
        got += rig.written()
        assert sorted(o.bet_id for o in outcomes_in(got)) == ["c2.50", "c2.51", "c2.52"]
        assert ticks_in(got) == [10_000, 11_000, 12_000]
        for i, request in enumerate(got):  # each deciding tick reached the log before its settle
            if isinstance(request, Settle):
                stored = ticks_in(got[:i])
                assert all(o.decided_by and o.decided_by.ts in stored for o in request.outcomes)


async def test_a_stuck_writer_stops_tick_intake_at_the_bound_instead_of_growing_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resolver_actor, "MAX_UNWRITTEN_TICKS", 3)
    async with running_resolver(last_tick_ts=9_000, writer_room=1, prefill_writer=1) as rig:
        for i in range(10):
            rig.ticks.send_nowait(tick(10_000 + i * 100, 40_000))
        await trio.testing.wait_all_tasks_blocked()
        assert rig.handle.unsent_ticks() == 3
        assert rig.ticks.statistics().current_buffer_used > 0  # ingest would be waiting

        stored: list[int] = []
        while len(stored) < 10:
            stored += ticks_in([await rig.writer.receive()])
        assert stored == [10_000 + i * 100 for i in range(10)]  # all of them, in order, once


async def test_ticks_ignored_by_the_index_are_not_stored() -> None:
    async with running_resolver(last_tick_ts=9_000) as rig:
        for ts in (10_000, 10_000, 9_999, 10_001):
            await rig.ticks.send(tick(ts, 40_000))
        await rig.ticks.send(Tick(symbol="ETH-USD", ts=10_002, price=1))  # no such market
        await trio.testing.wait_all_tasks_blocked()
        assert ticks_in(rig.written()) == [10_000, 10_000, 10_001]  # equal ts is a tick too


async def test_a_touch_in_the_same_millisecond_wins_and_both_ticks_are_stored() -> None:
    """Issue 9, defect 5 through the actor: the second trade of a millisecond touches the band;
    the bet is won by it, and the log keeps both trades so replay sees what the resolver saw."""
    async with running_resolver(last_tick_ts=9_000) as rig:
        await rig.bets.send(confirmed(2, 50))
        await trio.testing.wait_all_tasks_blocked()
        await rig.ticks.send(tick(11_000, 40_000))
        await rig.ticks.send(tick(11_000, 50_000))
        await trio.testing.wait_all_tasks_blocked()
        written = rig.written()
        [won] = outcomes_in(written)
        assert (won.bet_id, won.status, won.payout) == ("c2.50", "won", 6_000_000)
        assert (won.decided_by.ts, won.decided_by.price) == (11_000, 50_000)  # type: ignore[union-attr]
        assert [(t.ts, t.price) for r in written if isinstance(r, StoreTicks) for t in r.ticks] == [
            (11_000, 40_000),
            (11_000, 50_000),
        ]


async def test_feed_end_hands_over_everything_decided_then_returns() -> None:
    async with running_resolver(last_tick_ts=9_000, writer_room=1, prefill_writer=1) as rig:
        await rig.bets.send(confirmed(2, 50))
        await rig.bets.send(confirmed(2, 60))
        for ts in (10_000, 12_000, 14_000, 15_000):
            await rig.ticks.send(tick(ts, 50_500 if ts == 10_000 else 40_000))
        await rig.ticks.aclose()
        got: list[WriterRequest] = []
        while not rig.finished.is_set():
            got += rig.written()
            await trio.testing.wait_all_tasks_blocked()
        got += rig.written()
        assert {(o.bet_id, o.status) for o in outcomes_in(got)} == {
            ("c2.50", "won"),
            ("c2.60", "lost"),
        }
        assert ticks_in(got) == [10_000, 12_000, 14_000, 15_000]


class _StepCounter(trio.abc.Instrument):
    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


async def test_a_committed_batch_of_bets_is_taken_in_one_task_step() -> None:
    """The bets of one committed batch arrive together; the follower takes them all in the round
    it wakes in, instead of yielding once per bet (a task step per bet under load, issue 12)."""
    counter = _StepCounter("follow_bets")
    async with running_resolver(last_tick_ts=9_500) as rig:
        await rig.ticks.send(tick(10_000, 40_000))
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(counter)
        try:
            for row in range(90):
                rig.bets.send_nowait(confirmed(4, row))
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert rig.handle.open_bets() == 90
        assert counter.steps == 1
