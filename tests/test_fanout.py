"""The fan-out of committed events: bounded subscriptions, lagging ones dropped, waiters."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.fanout import CommittedFanout, Lagged
from tap.messages import BalanceChanged, BetConfirmed, BetRejected, EntryPosted, PlaceBet
from tests.builders import placed_bet

NOW = 1_732_290_000_000


def bet(n: int) -> PlaceBet:
    return placed_bet(n, multiplier_bps=20_000)


def balance(n: int) -> BalanceChanged:
    return BalanceChanged(address="0xaa", available=n, locked=0, at=NOW)


async def test_a_lagging_subscriber_is_dropped_without_slowing_the_others() -> None:
    fanout = CommittedFanout()
    slow = fanout.subscribe(2, "slow")
    fast = fanout.subscribe(10, "fast")
    for n in range(3):
        fanout.publish([balance(n)])  # never blocks, even though `slow` is full after two
    assert fanout.dropped == 1
    assert [await fast.receive() for _ in range(3)] == [balance(0), balance(1), balance(2)]
    assert [await slow.receive() for _ in range(2)] == [balance(0), balance(1)]
    with pytest.raises(Lagged):
        await slow.receive()
    fanout.publish([balance(3)])
    assert await fast.receive() == balance(3)


async def test_a_waiter_gets_the_first_answer_for_its_bet_only() -> None:
    fanout = CommittedFanout()
    confirmed = BetConfirmed(bet=bet(1).as_bet("rejected", "x"))
    other = BetRejected(bet=bet(2).as_bet("rejected", "insufficient_funds"), reason="x")
    with fanout.expect_bet("bet-1") as waiter, fanout.expect_entry("dep-0xaa") as entry:
        fanout.publish([other, confirmed, BetRejected(bet=confirmed.bet, reason="late")])
        assert await waiter.wait() is confirmed
        assert entry.answer is None
        posted = EntryPosted(ref="dep-0xaa", entry=None, error="insufficient_funds")
        fanout.publish([posted])
        assert await entry.wait() is posted
    assert fanout._bet_waiters == {} and fanout._ref_waiters == {}


async def test_a_subscription_hands_out_a_committed_batch_without_yielding_per_event() -> None:
    fanout = CommittedFanout()
    sub = fanout.subscribe(1000, "hub")
    batch = [balance(n) for n in range(100)]
    fanout.publish(batch)
    first = await sub.receive()  # the batch's first event may wait (and checkpoints)
    with trio.testing.assert_no_checkpoints():
        rest = [await sub.receive() for _ in range(99)]
    assert [first, *rest] == batch


async def test_a_subscription_lags_when_the_events_it_holds_would_pass_its_capacity() -> None:
    fanout = CommittedFanout()
    sub = fanout.subscribe(3, "small")
    fanout.publish([balance(0), balance(1)])
    fanout.publish([balance(2), balance(3)])  # 4 events held > 3: dropped, whole batch
    assert fanout.dropped == 1
    assert [await sub.receive() for _ in range(2)] == [balance(0), balance(1)]
    with pytest.raises(Lagged):
        await sub.receive()


async def test_receive_batch_takes_across_committed_batches_up_to_its_limit() -> None:
    fanout = CommittedFanout()
    sub = fanout.subscribe(5, "bus")
    fanout.publish([balance(0), balance(1), balance(2)])
    fanout.publish([balance(3), balance(4)])
    assert await sub.receive_batch(4) == [balance(n) for n in range(4)]
    assert await sub.receive_batch(10) == [balance(4)]
    fanout.publish([balance(n) for n in range(5)])  # all handed out: room for 5 again
    assert fanout.dropped == 0
    assert await sub.receive_batch(10) == [balance(n) for n in range(5)]


async def test_a_subscription_keeping_up_is_never_dropped_however_many_batches_pass() -> None:
    fanout = CommittedFanout()
    sub = fanout.subscribe(3, "steady")
    for n in range(50):
        fanout.publish([balance(n), balance(n)])
        assert [await sub.receive() for _ in range(2)] == [balance(n), balance(n)]
    assert fanout.dropped == 0


async def test_closing_the_fanout_ends_every_subscription() -> None:
    fanout = CommittedFanout()
    sub = fanout.subscribe(4)
    gone = fanout.subscribe(4)
    gone.close()
    fanout.publish([balance(1)])  # the closed one is forgotten quietly
    fanout.close()
    assert [e async for e in sub] == [balance(1)]
    assert [e async for e in fanout.subscribe(4)] == []
