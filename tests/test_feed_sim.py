"""The standalone simulator server (`tap feed-sim`) with real trio-websocket clients."""

from __future__ import annotations

import itertools
from functools import partial

import msgspec
import trio
import trio.testing
import trio_websocket

from actors.feed_sim import serve_feed_sim
from tap.feeds import GbmSim
from tap.messages import WsPrice
from tap.runtime.clock import Clock

T0 = 1_732_287_600_000
LONG = 600  # mock seconds


async def start_sim(nursery: trio.Nursery, seed: int = 5, symbol: str = "BTC-USD") -> int:
    port: int = await nursery.start(
        partial(serve_feed_sim, symbol=symbol, clock=Clock(T0)),
        "127.0.0.1",
        0,
        seed,
        0.6,
        250,
        10_000_000,
    )
    return port


async def frames(ws: trio_websocket.WebSocketConnection, n: int) -> list[WsPrice]:
    with trio.fail_after(LONG):
        return [msgspec.json.decode(await ws.get_message(), type=WsPrice) for _ in range(n)]


def gbm_at(seed: int, timestamps: list[int]) -> list[int]:
    sim = GbmSim(seed, 0.6, 250, 10_000_000)
    sim.next(T0)
    return [sim.next(ts) for ts in timestamps]


async def test_binding_port_zero_reports_the_real_port(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_sim(nursery)
        assert 0 < port < 65536
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/any/path") as ws:
            assert len(await frames(ws, 1)) == 1
        nursery.cancel_scope.cancel()


async def test_clients_see_one_seeded_path_as_price_frames_every_tick_ms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_sim(nursery, seed=5, symbol="ETH-USD")
        url = f"ws://127.0.0.1:{port}/"
        async with trio_websocket.open_websocket_url(url) as first:
            early = await frames(first, 4)
            async with trio_websocket.open_websocket_url(url) as second:
                late = await frames(second, 20)
                more = await frames(first, 40)
        nursery.cancel_scope.cancel()
    seen_by_first = early + more
    assert {f.symbol for f in seen_by_first + late} == {"ETH-USD"}
    steps = {b.ts - a.ts for a, b in itertools.pairwise(seen_by_first)}
    assert steps == {250}
    assert [f.price for f in seen_by_first] == gbm_at(5, [f.ts for f in seen_by_first])
    by_ts = {f.ts: f.price for f in seen_by_first}
    assert all(by_ts[f.ts] == f.price for f in late)  # a late joiner sees the same path


async def test_a_client_that_sends_garbage_and_one_that_leaves_do_not_disturb_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_sim(nursery)
        url = f"ws://127.0.0.1:{port}/"
        async with trio_websocket.open_websocket_url(url) as steady:
            async with trio_websocket.open_websocket_url(url) as chatty:
                for _ in range(50):
                    await chatty.send_message("not a subscription")
                await frames(chatty, 3)
            got = await frames(steady, 30)
        nursery.cancel_scope.cancel()
    assert {b.ts - a.ts for a, b in itertools.pairwise(got)} == {250}


async def test_a_stall_of_the_server_sends_every_scheduled_tick_late_not_never(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 9, defect 4a for `tap feed-sim`: the server's loop is frozen for 5 s. A reading
    client then gets the 20 ticks scheduled in those 5 s, consecutive, each stamped with its
    scheduled time and priced on the path; the old server skipped them (a 5 s feed gap)."""
    async with trio.open_nursery() as nursery:
        port = await start_sim(nursery, seed=7)
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            before = await frames(ws, 2)
            await trio.testing.wait_all_tasks_blocked()  # the server sleeps until its next tick
            autojump_clock.jump(5.0)
            after = await frames(ws, 24)
        nursery.cancel_scope.cancel()
    seen = before + after
    assert {b.ts - a.ts for a, b in itertools.pairwise(seen)} == {250}
    assert after[-1].ts - before[-1].ts == 24 * 250  # none of the 20 inside the stall is missing
    assert [f.price for f in seen] == gbm_at(7, [f.ts for f in seen])
