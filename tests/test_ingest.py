"""The ingest actor: sources, per-output delivery guarantees, and surviving a bad feed.

Feed servers here are real trio-websocket servers on 127.0.0.1:0; time is the autojump clock,
so a 1 s dead-feed timeout or a backoff costs nothing real.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
import trio_websocket
from prometheus_client import REGISTRY

from actors import ingest
from actors.feed_sim import serve_feed_sim
from actors.ingest import ManualFeed, TickOutput
from tap.config import Config, decode_config
from tap.feeds import GbmSim
from tap.messages import Tick, WsPrice
from tap.runtime.clock import Clock

T0 = 1_732_287_600_000
FEEDS = Path(__file__).resolve().parent / "data" / "feeds"
LONG = 600  # mock seconds: a guard against hanging, never reached when the test passes
# Ingest's clock for scripted exchange feeds: a minute after the scripts' timestamps, so every
# scripted tick is in the past (as real ones are) and none trips the future-tick guard.
FEED_NOW = T0 + 60_000


def config(**feed: Any) -> Config:
    return decode_config({"feed": {"dead_after_ms": 1000, "backoff_initial_ms": 100, **feed}})


def sample(name: str) -> list[str]:
    return [line for line in (FEEDS / name).read_text().splitlines() if line]


def reconnects(source: str) -> float:
    return REGISTRY.get_sample_value("tap_feed_reconnects_total", {"source": source}) or 0.0


async def take(receive: trio.MemoryReceiveChannel[Tick], n: int) -> list[Tick]:
    with trio.fail_after(LONG):
        return [await receive.receive() for _ in range(n)]


def replay(ticks: list[Tick], seed: int = 1, sigma: float = 0.6) -> list[int]:
    """The prices a fresh GbmSim gives at the same timestamps, anchored at `T0`."""
    sim = GbmSim(seed, sigma, 250, 10_000_000)
    sim.next(T0)
    return [sim.next(t.ts) for t in ticks]


# ── in-process sources ────────────────────────────────────────────────────────────────────────


async def test_sim_source_ticks_every_sim_tick_ms_on_the_seeded_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[Tick](100)
    async with trio.open_nursery() as nursery:
        status = await nursery.start(
            ingest.run, config(sim_seed=1), Clock(T0), [TickOutput("resolver", send, True)]
        )
        ticks = await take(receive, 40)
        nursery.cancel_scope.cancel()
    assert [t.ts for t in ticks] == [T0 + 250 * i for i in range(40)]
    assert {t.symbol for t in ticks} == {"BTC-USD"}
    assert [t.price for t in ticks] == replay(ticks)
    assert status.connected and status.last_tick == ticks[-1]


async def test_a_consumer_that_never_reads_loses_market_data_but_lossless_ones_lose_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub_send, hub_receive = trio.open_memory_channel[Tick](2)
    store_send, store_receive = trio.open_memory_channel[Tick](100)
    outputs = [TickOutput("hub", hub_send, False), TickOutput("store", store_send, True)]
    async with trio.open_nursery() as nursery:
        status = await nursery.start(ingest.run, config(), Clock(T0), outputs)
        ticks = await take(store_receive, 50)
        delivered = (status.last_tick.ts - T0) // 250 + 1
        nursery.cancel_scope.cancel()
    assert [t.ts for t in ticks] == [T0 + 250 * i for i in range(50)]
    assert status.dropped == {"hub": delivered - 2}
    assert [hub_receive.receive_nowait().ts for _ in range(2)] == [T0, T0 + 250]


async def test_a_stuck_lossless_consumer_holds_ingest_back_and_then_gets_every_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver_send, resolver_receive = trio.open_memory_channel[Tick](4)
    hub_send, hub_receive = trio.open_memory_channel[Tick](1000)
    outputs = [TickOutput("resolver", resolver_send, True), TickOutput("hub", hub_send, False)]
    async with trio.open_nursery() as nursery:
        await nursery.start(ingest.run, config(), Clock(T0), outputs)
        await trio.sleep(10)  # the resolver is stuck for 40 ticks' worth of time
        held_back = hub_receive.statistics().current_buffer_used
        ticks = await take(resolver_receive, 12)
        nursery.cancel_scope.cancel()
    assert held_back == 5  # four buffered and one waiting: ingest did not run ahead
    # Every tick ingest made reached the resolver: replaying the path over the same timestamps
    # draws the same random steps, which it would not if one had been skipped.
    assert [t.price for t in ticks] == replay(ticks)
    # ... and being held back skipped no tick of the schedule: the late ones followed at once.
    assert [t.ts for t in ticks] == [T0 + 250 * i for i in range(12)]


async def test_a_stall_of_our_loop_skips_no_tick_of_the_simulated_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 9, defect 4a: the event loop is frozen for 5 s (the mock clock jumps with no task
    running). The simulator's path is a function of time: all 20 ticks scheduled in those 5 s
    come out at once, stamped with their scheduled times, priced on the path. The old driver
    skipped them, leaving a 5 s hole in the tick log that voided the bets it overlapped."""
    send, receive = trio.open_memory_channel[Tick](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(ingest.run, config(), Clock(T0), [TickOutput("resolver", send, True)])
        before = await take(receive, 4)  # T0 … T0 + 750
        await trio.testing.wait_all_tasks_blocked()  # ingest sleeps until T0 + 1000
        autojump_clock.jump(5.0)  # a stall: nothing runs while 5 s pass
        after = await take(receive, 24)
        nursery.cancel_scope.cancel()
    ticks = before + after
    assert [t.ts for t in ticks] == [T0 + 250 * i for i in range(28)]  # 20 inside the stall
    assert [t.price for t in ticks] == replay(ticks)


async def test_manual_feed_pushes_ticks_at_given_or_current_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[Tick](10)
    async with trio.open_nursery() as nursery:
        status = await nursery.start(
            ingest.run, config(source="manual"), Clock(T0), [TickOutput("r", send, True)]
        )
        feed = status.manual
        assert isinstance(feed, ManualFeed)
        feed.push(9_700_000, ts=T0 + 5)
        await trio.sleep(3)
        feed.push(9_700_100)
        with pytest.raises(ValueError):
            feed.push(9_700_200, ts=T0)
        ticks = await take(receive, 2)
        await trio.sleep(5)
        staleness = REGISTRY.get_sample_value("tap_feed_staleness_seconds", {"symbol": "BTC-USD"})
        nursery.cancel_scope.cancel()
    assert ticks == [
        Tick(symbol="BTC-USD", ts=T0 + 5, price=9_700_000),
        Tick(symbol="BTC-USD", ts=T0 + 3000, price=9_700_100),
    ]
    assert staleness is not None and 4.0 <= staleness <= 5.0


async def test_a_manual_feed_passed_in_is_the_one_ingest_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(T0)
    feed = ManualFeed(clock, "BTC-USD")
    send, receive = trio.open_memory_channel[Tick](10)
    async with trio.open_nursery() as nursery:
        status = await nursery.start(
            partial(ingest.run, manual=feed),
            config(source="manual"),
            clock,
            [TickOutput("r", send, True)],
        )
        assert status.manual is feed
        feed.push(9_700_000)
        assert await take(receive, 1) == [Tick(symbol="BTC-USD", ts=T0, price=9_700_000)]
        nursery.cancel_scope.cancel()


# ── WebSocket sources ─────────────────────────────────────────────────────────────────────────

Script = Callable[[trio_websocket.WebSocketConnection, int], Awaitable[None]]


class ScriptedFeed:
    """A local feed server that plays one script per connection (the last one repeats)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.connections = 0
        self.received: list[str | bytes] = []
        self.closed_by_client: list[int] = []

    async def handle(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        n = self.connections
        self.connections += 1
        await self.scripts[min(n, len(self.scripts) - 1)](ws, n)

    async def wait_for_close(self, ws: trio_websocket.WebSocketConnection, n: int) -> None:
        """Stall: send nothing, keep the socket open, record the client hanging up."""
        try:
            while True:
                self.received.append(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            self.closed_by_client.append(n)

    async def serve(self, nursery: trio.Nursery) -> str:
        server = await nursery.start(
            trio_websocket.serve_websocket, self.handle, "127.0.0.1", 0, None
        )
        return f"ws://127.0.0.1:{server.port}/"


def price_frame(ts: int, price: int) -> str:
    return msgspec.json.encode(WsPrice(symbol="BTC-USD", ts=ts, price=price)).decode()


async def test_ingest_reconnects_after_a_dropped_and_a_silent_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def drop(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        for i in range(3):
            await ws.send_message(price_frame(T0 + i, 100 + i))
        await ws.aclose()

    async def stall(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        for i in range(2):
            await ws.send_message(price_frame(T0 + 100 + i, 200 + i))
        await feed.wait_for_close(ws, n)

    async def steady(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        for i in range(1000):
            await ws.send_message(price_frame(T0 + 10_000 * n + i, 1000 * n + i))
            await trio.sleep(0.1)

    feed = ScriptedFeed(drop, stall, steady)
    before = reconnects("ws-sim")
    send, receive = trio.open_memory_channel[Tick](100)
    async with trio.open_nursery() as nursery:
        url = await feed.serve(nursery)
        status = await nursery.start(
            partial(ingest.run, rand=lambda: 0.5),
            config(source="ws-sim", url=url),
            Clock(FEED_NOW),
            [TickOutput("resolver", send, True)],
        )
        ticks = await take(receive, 8)
        nursery.cancel_scope.cancel()
    assert [t.price for t in ticks] == [100, 101, 102, 200, 201, 2000, 2001, 2002]
    assert feed.connections >= 3
    assert feed.closed_by_client == [1]  # ingest gave up on the silent connection itself
    assert status.reconnects >= 2
    assert reconnects("ws-sim") - before == status.reconnects


async def test_ingest_backs_off_while_the_feed_refuses_and_recovers_by_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def refuse(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        await ws.aclose()

    async def serve_one(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        await ws.send_message(price_frame(T0 + n, 42))
        await feed.wait_for_close(ws, n)

    feed = ScriptedFeed(*[refuse] * 6, serve_one)
    send, receive = trio.open_memory_channel[Tick](10)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        url = await feed.serve(nursery)
        status = await nursery.start(
            partial(ingest.run, rand=lambda: 0.5),
            config(source="ws-sim", url=url),
            Clock(T0),
            [TickOutput("r", send, True)],
        )
        assert await take(receive, 1) == [Tick(symbol="BTC-USD", ts=T0 + 6, price=42)]
        waited = trio.current_time() - start
        nursery.cancel_scope.cancel()
    # Half of each doubling ceiling (rand = 0.5): 50 + 100 + 200 + 400 + 800 + 1600 ms.
    assert waited == pytest.approx(3.15, abs=0.01)
    assert status.reconnects == 6


async def test_a_refused_connection_is_retried_until_the_feed_appears(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens on `port` now: connecting is refused at once
    send, receive = trio.open_memory_channel[Tick](10)
    async with trio.open_nursery() as nursery:
        status = await nursery.start(
            partial(ingest.run, rand=lambda: 0.5),
            config(source="ws-sim", url=f"ws://127.0.0.1:{port}/"),
            Clock(T0),
            [TickOutput("r", send, True)],
        )
        await trio.sleep(5)
        refused = status.reconnects
        await nursery.start(
            partial(serve_feed_sim, clock=Clock(T0)), "127.0.0.1", port, 1, 0.6, 250, 10_000_000
        )
        assert len(await take(receive, 3)) == 3
        nursery.cancel_scope.cancel()
    assert refused >= 3


async def test_a_dead_primary_fails_over_to_the_fallback_url_and_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def refuse(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        await ws.aclose()

    async def two_ticks_then_drop(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        for i in range(2):
            await ws.send_message(price_frame(T0 + 100 * n + i, 1000 + 100 * n + i))
        await ws.aclose()

    async def steady(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        for i in range(1000):
            await ws.send_message(price_frame(T0 + 1000 + i, 5000 + i))
            await trio.sleep(0.1)

    primary = ScriptedFeed(refuse, steady)  # down at first, back for the second connection
    fallback = ScriptedFeed(two_ticks_then_drop)
    send, receive = trio.open_memory_channel[Tick](100)
    async with trio.open_nursery() as nursery:
        primary_url = await primary.serve(nursery)
        fallback_url = await fallback.serve(nursery)
        await nursery.start(
            partial(ingest.run, rand=lambda: 0.5),
            config(source="ws-sim", url=primary_url, fallback_url=fallback_url),
            Clock(T0),
            [TickOutput("r", send, True)],
        )
        ticks = await take(receive, 4)
        nursery.cancel_scope.cancel()
    # primary refused → fallback's two ticks → it dropped → primary again, now serving.
    assert [t.price for t in ticks] == [1000, 1001, 5000, 5001]
    assert (primary.connections, fallback.connections) == (2, 1)


async def test_without_a_fallback_every_reconnect_goes_to_the_one_url(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def refuse(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        await ws.aclose()

    async def serve_one(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        await ws.send_message(price_frame(T0 + n, 42))
        await feed.wait_for_close(ws, n)

    feed = ScriptedFeed(refuse, refuse, serve_one)
    send, receive = trio.open_memory_channel[Tick](10)
    async with trio.open_nursery() as nursery:
        url = await feed.serve(nursery)
        await nursery.start(
            partial(ingest.run, rand=lambda: 0.5),
            config(source="ws-sim", url=url),
            Clock(T0),
            [TickOutput("r", send, True)],
        )
        assert [t.price for t in await take(receive, 1)] == [42]
        nursery.cancel_scope.cancel()
    assert feed.connections == 3


async def test_a_bad_feed_url_or_symbol_fails_before_starting() -> None:
    send, _ = trio.open_memory_channel[Tick](1)
    outputs = [TickOutput("r", send, True)]
    async with trio.open_nursery() as nursery:
        with pytest.raises(ValueError, match=r"feed\.url"):
            await nursery.start(
                ingest.run, config(source="binance", url="https://x.test/"), Clock(T0), outputs
            )
        with pytest.raises(ValueError, match=r"feed\.fallback_url"):
            await nursery.start(
                ingest.run,
                config(source="binance", url="wss://x.test/", fallback_url="http://y.test/"),
                Clock(T0),
                outputs,
            )
        with pytest.raises(ValueError, match=r"feed\.symbol"):
            await nursery.start(ingest.run, config(symbol="DOGE-USD"), Clock(T0), outputs)


async def test_ws_sim_source_reads_the_standalone_simulator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[Tick](100)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(serve_feed_sim, clock=Clock(T0)), "127.0.0.1", 0, 1, 0.6, 250, 10_000_000
        )
        await nursery.start(
            ingest.run,
            config(source="ws-sim", url=f"ws://127.0.0.1:{port}/"),
            Clock(T0),
            [TickOutput("r", send, True)],
        )
        ticks = await take(receive, 10)
        nursery.cancel_scope.cancel()
    steps = [b.ts - a.ts for a, b in itertools.pairwise(ticks)]
    assert steps == [250] * 9
    assert [t.price for t in ticks] == replay(ticks)


async def test_a_stall_of_our_loop_longer_than_dead_after_ms_is_not_a_dead_feed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 9, defect 4 on the network path: our loop freezes for 3 s, longer than
    `dead_after_ms` (1 s here). When it resumes, the dead-feed timer has expired, but the
    socket holds what the feed sent meanwhile. The old ingest declared the feed dead at once,
    hung up and lost those ticks: a hole in the tick log, read as a feed gap (voids). Now the
    silence is re-checked first, the buffered ticks are read and the connection stays up."""
    send, receive = trio.open_memory_channel[Tick](100)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(serve_feed_sim, clock=Clock(T0)), "127.0.0.1", 0, 1, 0.6, 250, 10_000_000
        )
        status = await nursery.start(
            ingest.run,
            config(source="ws-sim", url=f"ws://127.0.0.1:{port}/"),
            Clock(T0),
            [TickOutput("r", send, True)],
        )
        before = await take(receive, 3)
        await trio.testing.wait_all_tasks_blocked()
        autojump_clock.jump(3.0)
        after = await take(receive, 20)
        nursery.cancel_scope.cancel()
    ticks = before + after
    assert [b.ts - a.ts for a, b in itertools.pairwise(ticks)] == [250] * 22
    assert status.reconnects == 0


async def exchange_session(
    source: str, lines: list[str], n_ticks: int
) -> tuple[list[Tick], ScriptedFeed, ingest.FeedStatus]:
    """Serve `lines` once to an ingest of `source`; return the first `n_ticks` it delivers."""

    async def play(ws: trio_websocket.WebSocketConnection, n: int) -> None:
        if source != "ws-sim":
            feed.received.append(await ws.get_message())  # the subscribe message
        for line in lines:
            await ws.send_message(line)
        await feed.wait_for_close(ws, n)

    feed = ScriptedFeed(play)
    send, receive = trio.open_memory_channel[Tick](100)
    async with trio.open_nursery() as nursery:
        url = await feed.serve(nursery)
        status = await nursery.start(
            ingest.run,
            config(source=source, url=url),
            Clock(FEED_NOW),
            [TickOutput("r", send, True)],
        )
        ticks = await take(receive, n_ticks)
        nursery.cancel_scope.cancel()
    return ticks, feed, status


BINANCE_LAST = (
    '{"e":"trade","E":1732287609000,"s":"BTCUSDT","t":4231552199,"p":"97010.00000000",'
    '"q":"0.1","T":1732287609000,"m":true,"M":true}'
)
COINBASE_LAST = (
    '{"type":"ticker","sequence":94238122199,"product_id":"BTC-USD","price":"97010.00",'
    '"side":"buy","time":"2024-11-22T15:00:09.000000Z","trade_id":702345999,"last_size":"0.1"}'
)


async def test_binance_source_subscribes_and_skips_acks_other_streams_and_garbage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad = sample("binance_bad.jsonl")
    lines = sample("binance.jsonl") + bad + [BINANCE_LAST]
    ticks, feed, status = await exchange_session("binance", lines, 6)
    assert msgspec.json.decode(feed.received[0]) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@trade"],
        "id": 1,
    }
    assert [(t.ts - T0, t.price) for t in ticks] == [
        (121, 9_700_012),
        (187, 9_700_012),
        (190, 9_700_014),
        (244, 9_700_013),
        (300, 9_699_999),
        (9000, 9_701_000),
    ]
    assert status.parse_errors == len(bad)


async def test_coinbase_source_subscribes_to_ticker_and_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad = sample("coinbase_bad.jsonl")
    lines = sample("coinbase.jsonl") + bad + [COINBASE_LAST]
    ticks, feed, status = await exchange_session("coinbase", lines, 4)
    assert msgspec.json.decode(feed.received[0]) == {
        "type": "subscribe",
        "product_ids": ["BTC-USD"],
        "channels": ["ticker", "heartbeat"],
    }
    assert [(t.ts - T0, t.price) for t in ticks] == [
        (123, 9_700_012),
        (999, 9_700_150),
        (1500, 9_700_000),
        (9000, 9_701_000),
    ]
    assert status.parse_errors == len(bad)


async def test_ticks_older_than_the_last_one_are_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    frames = [price_frame(T0 + 200, 1), price_frame(T0 + 100, 2), price_frame(T0 + 200, 3)]
    ticks, _, status = await exchange_session("ws-sim", frames, 2)
    assert [t.price for t in ticks] == [1, 3]
    assert status.out_of_order == 1


# ── ticks from the future ─────────────────────────────────────────────────────────────────────

# The last Binance trade with its trade time in µs, as a feed that mixed up units would send it.
BINANCE_MICROS = BINANCE_LAST.replace('"T":1732287609000', '"T":1732287609000000')


async def test_an_exchange_tick_stamped_far_in_the_future_is_refused_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lines = [*sample("binance.jsonl"), BINANCE_MICROS, BINANCE_LAST]
    ticks, _, status = await exchange_session("binance", lines, 6)
    # Had the µs tick gone through, it would be among the six and the real last trade after it
    # would have been dropped as out of order.
    assert [(t.ts - T0, t.price) for t in ticks] == [
        (121, 9_700_012),
        (187, 9_700_012),
        (190, 9_700_014),
        (244, 9_700_013),
        (300, 9_699_999),
        (9000, 9_701_000),
    ]
    assert status.rejected_future == 1
    assert status.out_of_order == 0
    assert status.last_tick == ticks[-1]


async def test_the_future_bound_is_max_future_ms_ahead_of_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[Tick](10)
    status = ingest.FeedStatus("ws-sim", "BTC-USD", None)
    fan = ingest._Fanout(Clock(T0), [TickOutput("resolver", send, True)], status)
    edge = T0 + ingest.MAX_FUTURE_MS
    assert not await fan.deliver(Tick(symbol="BTC-USD", ts=edge + 1, price=1))
    assert await fan.deliver(Tick(symbol="BTC-USD", ts=edge, price=2))
    assert status.rejected_future == 1
    assert status.last_tick == Tick(symbol="BTC-USD", ts=edge, price=2)
    assert receive.receive_nowait().price == 2
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_ws_sim_ticks_in_the_future_never_reach_any_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    frames = [
        price_frame(T0 + 100, 1),
        price_frame(FEED_NOW + 3_600_000, 2),  # an hour ahead: a mis-set exchange clock
        price_frame(T0 + 200, 3),
    ]
    ticks, _, status = await exchange_session("ws-sim", frames, 2)
    assert [t.price for t in ticks] == [1, 3]
    assert status.rejected_future == 1


async def test_the_manual_feed_may_run_ahead_of_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[Tick](10)
    async with trio.open_nursery() as nursery:
        status = await nursery.start(
            ingest.run, config(source="manual"), Clock(T0), [TickOutput("r", send, True)]
        )
        assert status.manual is not None
        status.manual.push(9_700_000, ts=T0 + 60_000)  # a test walking a column to its end
        assert await take(receive, 1) == [Tick(symbol="BTC-USD", ts=T0 + 60_000, price=9_700_000)]
        nursery.cancel_scope.cancel()
    assert status.rejected_future == 0
