"""The WS fan-out: slow clients coalesce or get closed, nobody else waits, frames encode once."""

from __future__ import annotations

from functools import partial

import msgspec
import trio
import trio.testing
from prometheus_client import REGISTRY

from actors import hub as hub_actor
from actors.hub import ACCOUNT, Hub, Subscriber, account_frame
from tap.messages import (
    Balance,
    BalanceChanged,
    Bet,
    BetConfirmed,
    BetRejected,
    BetResolved,
    BreakerChanged,
    Committed,
    EntryPosted,
    Tick,
    WsBalance,
    WsBetConfirmed,
    WsBetRejected,
    WsBetResolved,
    WsBreaker,
    WsGrid,
    WsPong,
    WsPrice,
)

T0 = 1_732_287_600_000
ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20
PRICES = "prices:BTC-USD"
GRID = "grid:BTC-USD"


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def price(i: int) -> WsPrice:
    return WsPrice(symbol="BTC-USD", ts=T0 + 250 * i, price=10_000_000 + i)


def grid(i: int) -> WsGrid:
    return WsGrid(
        symbol="BTC-USD",
        as_of=T0 + i,
        price=10_000_000,
        volatility=0.6,
        house_edge_bps=500,
        pricing_model="discrete_ticks",
        monitoring_interval_ms=250,
        next_tick_ms=T0 + i + 250,
        breaker="closed",
        cells=[],
    )


def bet(address: str, status: str = "confirmed") -> Bet:
    return msgspec.convert(
        {
            "bet_id": "b1",
            "address": address,
            "cell_id": "BTC-USD:1:2",
            "amount": 1_000_000,
            "multiplier_bps": 20_000,
            "nonce": "n" * 16,
            "status": status,
            "accepted_at": T0,
        },
        Bet,
    )


def decoded(frames: list[str]) -> list[dict[str, object]]:
    return [msgspec.json.decode(f) for f in frames]


async def taken(subscriber: Subscriber) -> list[str]:
    """The frames a writer would send next; the client must not be closing."""
    with trio.fail_after(1):
        frames, close_code = await subscriber.next_frames()
    assert close_code is None
    return frames


async def close_code(subscriber: Subscriber) -> int | None:
    with trio.fail_after(1):
        frames, code = await subscriber.next_frames()
    assert frames == []
    return code


async def test_a_client_that_never_reads_does_not_stop_others_getting_every_price(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(ws_queue=8)
    stalled = hub.connect()
    readers = [hub.connect() for _ in range(3)]
    for s in [stalled, *readers]:
        s.subscribe([PRICES])
    received: list[list[int]] = [[] for _ in readers]
    dropped_before = metric("tap_ws_dropped_frames_total")

    async def writer(subscriber: Subscriber, into: list[int]) -> None:
        while True:
            for frame in await taken(subscriber):
                into.append(msgspec.json.decode(frame, type=WsPrice).price)

    async with trio.open_nursery() as nursery:
        for reader, into in zip(readers, received, strict=True):
            nursery.start_soon(writer, reader, into)
        for i in range(500):
            hub.publish(PRICES, price(i))
            await trio.sleep(0.25)
        nursery.cancel_scope.cancel()

    assert received == [[10_000_000 + i for i in range(500)]] * 3
    assert stalled.pending == 1  # coalesced to one slot, not 500 frames
    assert decoded(await taken(stalled)) == [msgspec.to_builtins(price(499))]
    assert metric("tap_ws_dropped_frames_total") - dropped_before == 499


async def test_market_data_coalesces_per_channel_and_keeps_publication_order() -> None:
    hub = Hub(ws_queue=8)
    client = hub.connect()
    client.subscribe([PRICES, GRID])
    hub.publish(PRICES, price(1))
    hub.publish(GRID, grid(1))
    hub.publish(PRICES, price(2))
    frames = decoded(await taken(client))
    assert [f["type"] for f in frames] == ["grid", "price"]
    assert frames[1]["price"] == 10_000_002


async def test_account_frames_are_never_coalesced_and_overflow_closes_with_1013() -> None:
    hub = Hub(ws_queue=4)
    client = hub.connect()
    client.subscribe([ACCOUNT, PRICES])
    client.set_address(ALICE.upper().replace("0X", "0x"))
    closes_before = metric("tap_ws_overflow_closes_total")
    for i in range(4):
        hub.publish_account(ALICE, WsBalance(available=i, locked=0))
    hub.publish(PRICES, price(1))
    assert [f["available"] for f in decoded(await taken(client)) if f["type"] == "balance"] == [
        0,
        1,
        2,
        3,
    ]
    for i in range(5):
        hub.publish_account(ALICE, WsBalance(available=i, locked=0))
    assert await close_code(client) == 1013
    assert metric("tap_ws_overflow_closes_total") - closes_before == 1
    hub.publish(PRICES, price(2))  # a closed client is not fed any more
    assert client.pending == 0


async def test_a_writer_stuck_in_a_send_finds_its_client_closed_with_1013_afterwards(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(ws_queue=1)
    client = hub.connect()
    socket_drains = trio.Event()
    sent: list[str] = []
    codes: list[int] = []

    async def writer() -> None:
        while True:
            frames, code = await client.next_frames()
            if code is not None:
                codes.append(code)
                return
            sent.extend(frames)
            await socket_drains.wait()  # a socket send that does not complete

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        client.send(WsPong(req_id="1"))
        await trio.testing.wait_all_tasks_blocked()
        client.send(WsPong(req_id="2"))  # queued: the queue holds one
        client.send(WsPong(req_id="3"))  # overflows
        assert client.close_code == 1013
        socket_drains.set()
    assert [f["req_id"] for f in decoded(sent)] == ["1"]
    assert codes == [1013]


async def test_each_frame_is_encoded_once_for_all_subscribers() -> None:
    hub = Hub(ws_queue=8)
    a, b = hub.connect(), hub.connect()
    for s in (a, b):
        s.subscribe([PRICES, ACCOUNT])
        s.set_address(ALICE)
    hub.publish(PRICES, price(1))
    hub.broadcast(WsBreaker(state="open", reason="jump"))
    hub.publish_account(ALICE, WsBalance(available=1, locked=2))
    frames_a, frames_b = await taken(a), await taken(b)
    assert len(frames_a) == 3
    assert all(fa is fb for fa, fb in zip(frames_a, frames_b, strict=True))


async def test_unsubscribe_stops_delivery_and_discards_unsent_frames() -> None:
    hub = Hub(ws_queue=8)
    client = hub.connect()
    client.subscribe([PRICES, GRID])
    hub.publish(PRICES, price(1))
    hub.publish(GRID, grid(1))
    client.unsubscribe([PRICES])
    hub.publish(PRICES, price(2))
    assert [f["type"] for f in decoded(await taken(client))] == ["grid"]
    assert client.pending == 0


async def test_account_frames_reach_only_that_address_when_subscribed_to_account() -> None:
    hub = Hub(ws_queue=8)
    alice, bob, alice_no_account = hub.connect(), hub.connect(), hub.connect()
    alice.subscribe([ACCOUNT])
    alice.set_address(ALICE)
    bob.subscribe([ACCOUNT])
    bob.set_address(BOB)
    alice_no_account.subscribe([PRICES])
    alice_no_account.set_address(ALICE)
    hub.publish_account(ALICE, WsBalance(available=5, locked=0))
    assert decoded(await taken(alice)) == [{"type": "balance", "available": 5, "locked": 0}]
    assert bob.pending == 0 and alice_no_account.pending == 0
    bob.set_address(ALICE)  # re-authenticated as someone else: routing follows
    hub.publish_account(BOB, WsBalance(available=1, locked=0))
    assert (alice.pending, bob.pending) == (0, 0)
    hub.publish_account(ALICE, WsBalance(available=2, locked=0))
    assert (alice.pending, bob.pending, alice_no_account.pending) == (1, 1, 0)


async def test_clients_gauge_and_disconnect_wake_the_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(ws_queue=8)
    gone = hub.connect()
    stays = hub.connect()
    gone.subscribe([PRICES])
    assert REGISTRY.get_sample_value("tap_ws_clients") == 2
    codes: list[int] = []

    async def writer() -> None:
        code = await close_code(gone)
        assert code is not None
        codes.append(code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        hub.disconnect(gone)
        hub.disconnect(gone)  # idempotent
    assert codes == [1000]
    assert hub.clients == 1 and REGISTRY.get_sample_value("tap_ws_clients") == 1
    hub.publish(PRICES, price(1))
    assert gone.pending == 0
    hub.close_all()
    assert await close_code(stays) == 1001


def test_committed_events_map_to_their_account_frames() -> None:
    confirmed, rejected, won = bet(ALICE), bet(ALICE, "rejected"), bet(ALICE, "won")
    assert account_frame(BetConfirmed(bet=confirmed)) == (ALICE, WsBetConfirmed(bet=confirmed))
    assert account_frame(BetRejected(bet=rejected, reason="duplicate_cell_bet")) == (
        ALICE,
        WsBetRejected(bet=rejected, reason="duplicate_cell_bet"),
    )
    assert account_frame(BetResolved(bet=won)) == (ALICE, WsBetResolved(bet=won))
    assert account_frame(BalanceChanged(address=BOB, available=3, locked=4, at=T0)) == (
        BOB,
        WsBalance(available=3, locked=4),
    )
    assert account_frame(EntryPosted(ref="r", entry=None, error="insufficient_funds")) is None


async def test_run_routes_commits_to_their_address_breaker_to_everyone_and_ticks_to_prices(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(ws_queue=16)
    alice, bob = hub.connect(), hub.connect()
    alice.subscribe([ACCOUNT, PRICES])
    alice.set_address(ALICE)
    bob.subscribe([ACCOUNT])
    bob.set_address(BOB)
    committed_send, committed = trio.open_memory_channel[Committed](8)
    breaker_send, breaker = trio.open_memory_channel[BreakerChanged](8)
    ticks_send, ticks = trio.open_memory_channel[Tick](8)
    async with trio.open_nursery() as nursery:
        run = partial(hub_actor.run, ticks=ticks)
        started = await nursery.start(run, hub, committed, breaker)
        assert started is hub
        for event in (
            BetConfirmed(bet=bet(ALICE)),
            BetRejected(bet=bet(ALICE, "rejected"), reason="insufficient_funds"),
            BetResolved(bet=bet(ALICE, "won")),
            BalanceChanged(address=ALICE, available=7, locked=0, at=T0),
            EntryPosted(ref="r", entry=None, error="insufficient_funds"),
        ):
            committed_send.send_nowait(event)
        breaker_send.send_nowait(BreakerChanged(state="open", reason="stale_feed", at=T0))
        ticks_send.send_nowait(Tick(symbol="BTC-USD", ts=T0, price=9_700_000))
        for channel in (committed_send, breaker_send, ticks_send):
            channel.close()
    # run() returned by itself once every input ended
    # Each input keeps its own order; the three forwarders interleave as trio schedules them.
    alice_frames = decoded(await taken(alice))
    account = [f for f in alice_frames if f["type"] not in ("breaker", "price")]
    assert [f["type"] for f in account] == [
        "bet_confirmed",
        "bet_rejected",
        "bet_resolved",
        "balance",
    ]
    assert account[1]["reason"] == "insufficient_funds"
    assert account[3] == {"type": "balance", "available": 7, "locked": 0}
    others = [f for f in alice_frames if f not in account]
    assert sorted(others, key=lambda f: str(f["type"])) == [
        {"type": "breaker", "state": "open", "reason": "stale_feed"},
        {"type": "price", "symbol": "BTC-USD", "ts": T0, "price": 9_700_000},
    ]
    assert decoded(await taken(bob)) == [
        {"type": "breaker", "state": "open", "reason": "stale_feed"}
    ]


def test_bet_frames_carry_the_balance_after_their_event() -> None:
    after = Balance(available=9_000_000, locked=1_000_000)
    routed = account_frame(BetConfirmed(bet=bet(ALICE), balance=after))
    assert routed is not None
    frame = decoded([Hub(ws_queue=4).encode(routed[1])])[0]
    assert frame["balance"] == {"available": 9_000_000, "locked": 1_000_000}
    assert "req_id" not in frame  # only the placing client's `ack: commit` frame carries one


def pending(address: str) -> Bet:
    return msgspec.structs.replace(bet(address), status="pending", confirmed_at=None)


async def test_ack_commit_answers_the_placing_client_once_with_its_req_id() -> None:
    hub = Hub(ws_queue=4)
    placing, other_tab, stranger = hub.connect(), hub.connect(), hub.connect()
    for client, address in ((placing, ALICE), (other_tab, ALICE), (stranger, BOB)):
        client.subscribe([ACCOUNT])
        client.set_address(address)
    placing.await_commit(pending(ALICE), "r-1", ack="commit")
    assert placing.pending == 0  # nothing is said before the commit
    after = Balance(available=5, locked=1)
    hub.publish_committed(BetConfirmed(bet=bet(ALICE), balance=after))
    mine = decoded(await taken(placing))
    assert [(f["type"], f.get("req_id")) for f in mine] == [("bet_confirmed", "r-1")]
    assert mine[0]["balance"] == {"available": 5, "locked": 1}
    theirs = decoded(await taken(other_tab))
    assert [(f["type"], f.get("req_id")) for f in theirs] == [("bet_confirmed", None)]
    assert stranger.pending == 0
    # answered once: a redelivered commit of the same bet is a plain account frame for everyone
    hub.publish_committed(BetConfirmed(bet=bet(ALICE), balance=after))
    assert [f.get("req_id") for f in decoded(await taken(placing))] == [None]


async def test_ack_queue_sends_bet_ack_only_once_the_bet_is_durable() -> None:
    hub = Hub(ws_queue=4)
    client = hub.connect()
    client.subscribe([ACCOUNT])
    client.set_address(ALICE)
    client.await_commit(pending(ALICE), "q-1", ack="queue")
    assert client.pending == 0
    hub.publish_committed(BetConfirmed(bet=bet(ALICE), balance=Balance(available=1, locked=2)))
    ack, confirmed = decoded(await taken(client))
    assert (ack["type"], ack["req_id"], ack["bet"]["status"]) == ("bet_ack", "q-1", "pending")
    assert ack["bet"]["confirmed_at"] is None
    assert (confirmed["type"], confirmed["balance"]) == (
        "bet_confirmed",
        {"available": 1, "locked": 2},
    )


async def test_writer_refusals_and_replays_answer_the_placing_client_with_an_error() -> None:
    hub = Hub(ws_queue=2)
    queued, committed = hub.connect(), hub.connect()  # not subscribed to "account"
    for client in (queued, committed):
        client.set_address(ALICE)
    queued.await_commit(pending(ALICE), "q-1", ack="queue")
    hub.publish_committed(BetRejected(bet=bet(ALICE, "rejected"), reason="insufficient_funds"))
    [error] = decoded(await taken(queued))
    assert (error["type"], error["req_id"], error["error"]["code"]) == (
        "error",
        "q-1",
        "insufficient_funds",
    )
    committed.await_commit(pending(ALICE), "c-1", ack="commit")
    hub.publish_committed(BetRejected(bet=bet(ALICE, "rejected"), reason="duplicate_cell_bet"))
    [rejected] = decoded(await taken(committed))
    assert (rejected["type"], rejected["req_id"]) == ("bet_rejected", "c-1")
    # the ledger answers with an earlier request's bet of that nonce: this one is a replay
    earlier = msgspec.structs.replace(pending(ALICE), accepted_at=T0 + 1)
    committed.await_commit(earlier, "c-2", ack="commit")
    hub.publish_committed(BetConfirmed(bet=bet(ALICE)))
    [replay] = decoded(await taken(committed))
    assert (replay["type"], replay["error"]["code"]) == ("error", "replayed_nonce")


def test_a_connection_holds_at_most_ws_queue_bets_in_flight() -> None:
    hub = Hub(ws_queue=2)
    client = hub.connect()
    for i in range(2):
        assert client.can_await_commit()
        client.await_commit(
            msgspec.structs.replace(pending(ALICE), bet_id=f"b{i}"), "r", ack="commit"
        )
    assert not client.can_await_commit()
    hub.disconnect(client)
    assert hub._commit_waits == {}
