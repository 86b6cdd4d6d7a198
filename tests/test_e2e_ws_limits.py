"""WebSocket limits against hostile frames (API.md "WebSocket /ws", Limits; issue 9: 2, 3, 6).

Each test pins one reproduced defect on a real server with a real client: the deep frame that
segfaulted the process, frames over 16 KiB, the 500,000-duplicate `subscribe` that froze the
event loop, `req_id`s echoed at any size, and sockets that never say hello.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from tap.edge.ws import MAX_CHANNELS, MAX_FRAME_BYTES
from tests.e2e import Server, WsClient, connect_ws, serving, wait_until
from tests.ws_attack import send_raw_text, ws_frame


async def close_code_of(ws: WsClient, within: float = 5.0) -> int:
    """Read (and drop) frames until the server closes; the close code."""
    with trio.fail_after(within), pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await ws.ws.get_message()
    code: int = closed.value.reason.code
    return code


async def assert_server_serves(server: Server) -> None:
    """/livez answers and a fresh client gets a pushed tick."""
    assert (await server.http().get("/livez")).status_code == 200
    async with connect_ws(server) as ws:
        await ws.subscribe(f"prices:{server.symbol}")
        tick = server.push(server.last_price + 100)
        frame = await ws.next_of_type("price", where=lambda f: f["ts"] == tick.ts)
        assert frame["price"] == tick.price


# ── defect 2: depth and size ──────────────────────────────────────────────────────────────────


async def test_the_50k_deep_frame_closes_1009_and_the_server_lives(server: Server) -> None:
    # Old code: the untyped decode in _req_id_of overflowed the C stack (SIGSEGV: this whole
    # test process died).
    async with connect_ws(server) as ws:
        await ws.send("[" * 50000 + "]" * 50000)
        assert await close_code_of(ws) == 1009
    await assert_server_serves(server)


async def test_a_deep_frame_under_16_kib_gets_an_error_frame_naming_the_depth(
    server: Server,
) -> None:
    deep = '{"type": "ping", "req_id": "d1", "x": ' + "[" * 7000 + "]" * 7000 + "}"
    assert len(deep) < MAX_FRAME_BYTES
    async with connect_ws(server) as ws:
        await ws.send(deep)
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "invalid_request"
        assert "deeper than 32" in error["error"]["message"]
        assert error["req_id"] is None  # nothing is decoded from a frame too deep to decode
        await ws.ping()
    await assert_server_serves(server)


@pytest.mark.parametrize(
    "frame",
    [
        "x" * (MAX_FRAME_BYTES + 1),
        json.dumps({"type": "ping", "req_id": "r" * 20000}),
        b"\x00" * (MAX_FRAME_BYTES + 1),
        # 9,000 characters, 18,000 bytes of UTF-8: Hypercorn counts characters, we count bytes.
        json.dumps({"type": "auth", "token": "é" * 9000}, ensure_ascii=False),
    ],
    ids=["text", "ping", "binary", "multibyte"],
)
async def test_a_frame_over_16_kib_closes_1009(server: Server, frame: str | bytes) -> None:
    async with connect_ws(server) as ws:
        await ws.send(frame)
        assert await close_code_of(ws) == 1009
    await assert_server_serves(server)


@pytest.mark.parametrize(
    ("first", "then"),
    [(b"\x00" * (MAX_FRAME_BYTES + 1), '{"type": "ping"}'), ("x" * (MAX_FRAME_BYTES + 1), b"\x00")],
    ids=["binary-then-text", "text-then-binary"],
)
async def test_frames_after_an_oversized_one_close_only_that_connection(
    server: Server, first: str | bytes, then: str | bytes
) -> None:
    # Found by the fuzzer: Hypercorn 0.18 feeds the next frame into the stale buffer of the
    # oversized one (TypeError), and its TCP server let that end serve(): the whole process.
    async with connect_ws(server) as ws:
        await ws.send(first)
        await ws.send(then)
        assert await close_code_of(ws) == 1009
    await assert_server_serves(server)
    assert not server.done.is_set()


async def test_after_a_1009_the_connection_really_ends(server: Server) -> None:
    # Hypercorn 0.18 sent 1009 and then stopped reading the frames behind the oversized one —
    # the client's close reply included: a subscribed client's socket and task stayed forever.
    hub = server.running.services.hub
    baseline = hub.clients
    async with connect_ws(server) as ws:
        await ws.subscribe(f"prices:{server.symbol}")  # subscribed: no hello timeout applies
        # One write, so the server reads all three frames at once, as a fast client's would be.
        burst = (
            ws_frame(0x1, b"x" * (MAX_FRAME_BYTES + 1))
            + ws_frame(0x1, b'{"type": "ping"}')
            + ws_frame(0x8, (1000).to_bytes(2, "big"))
        )
        await ws.ws._stream.send_all(burst)  # raw frames, as in ws_attack
        assert await close_code_of(ws) == 1009
    await wait_until(lambda: hub.clients == baseline)


async def test_invalid_utf8_in_a_text_frame_closes_1007(server: Server) -> None:
    # RFC 6455 §8.1: fail the connection with 1007. Hypercorn dropped the socket without the
    # close frame (the client saw 1006).
    async with connect_ws(server) as ws:
        await ws.subscribe(f"prices:{server.symbol}")
        await send_raw_text(ws.ws, b'{"type": "ping", "req_id": "\xff"}')
        assert await close_code_of(ws) == 1007
    await assert_server_serves(server)


async def test_an_empty_binary_frame_is_an_error_frame(server: Server) -> None:
    # Quart hands an empty binary frame over as None (`bytes or text`): old code passed it to
    # the decoder and the connection's handler died (close 1000, no answer).
    async with connect_ws(server) as ws:
        await ws.send(b"")
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "invalid_request"
        await ws.ping()


# ── defect 3: subscribe ───────────────────────────────────────────────────────────────────────


async def test_the_500k_duplicate_subscribe_is_refused_without_work(server: Server) -> None:
    # Old code: 8.7 s of /livez stall building 500,000 grid snapshots. Now it cannot arrive.
    channels = [f"grid:{server.symbol}"] * 500_000
    async with connect_ws(server) as ws:
        await ws.send({"type": "subscribe", "channels": channels})
        assert await close_code_of(ws) == 1009
    await assert_server_serves(server)


async def test_duplicate_channels_count_once_and_get_one_snapshot(server: Server) -> None:
    grid = f"grid:{server.symbol}"
    async with connect_ws(server) as ws:
        # 64 copies (the most one frame may name): old code built 64 grids and 64 breaker
        # frames, overflowed the 64-frame account queue and closed the client with 1013.
        await ws.send({"type": "subscribe", "channels": [grid] * 64})
        pong = await ws.ping()
        assert pong["type"] == "pong"
        kinds = [f["type"] for f in ws.backlog]
        assert kinds.count("grid") == 1 and kinds.count("breaker") == 1, kinds
        # Subscribing again to what it has changes nothing and builds no new snapshot.
        ws.backlog.clear()
        await ws.send({"type": "subscribe", "channels": [grid, grid]})
        await ws.ping()
        # (`grid` frames keep coming at 1 Hz; a snapshot would bring a `breaker` frame too.)
        assert "breaker" not in [f["type"] for f in ws.backlog]


async def test_many_duplicates_under_16_kib_are_one_cheap_error(server: Server) -> None:
    channels = [f"grid:{server.symbol}"] * 1000  # ~15 KiB: arrives, refused at decoding
    frame = json.dumps({"type": "subscribe", "channels": channels})
    assert len(frame) < MAX_FRAME_BYTES
    async with connect_ws(server) as ws:
        await ws.send(frame)
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "invalid_request"
        await ws.ping()
        assert not [f for f in ws.backlog if f["type"] == "grid"]


async def test_more_than_16_distinct_channels_is_an_error(server: Server) -> None:
    too_many = [f"prices:X{i}" for i in range(MAX_CHANNELS + 1)]
    async with connect_ws(server) as ws:
        await ws.send({"type": "subscribe", "channels": too_many + too_many})
        error = await ws.next_of_type("error")
        assert error["error"]["code"] == "invalid_request"
        assert f"at most {MAX_CHANNELS}" in error["error"]["message"]
        # 16 distinct (repeated) is within the limit: judged channel by channel.
        await ws.send({"type": "subscribe", "channels": too_many[:MAX_CHANNELS] * 2})
        error = await ws.next_of_type("error")
        assert "unknown channel" in error["error"]["message"]
        await ws.subscribe(f"prices:{server.symbol}")
        tick = server.push(server.last_price + 100)
        await ws.next_of_type("price", where=lambda f: f["ts"] == tick.ts)


async def test_no_snapshot_is_built_for_a_client_already_closed(server: Server) -> None:
    svc = server.running.services
    built: list[str] = []
    real_market = svc.market

    class CountingMarket:
        def grid(self, symbol: str) -> Any:
            built.append(symbol)
            return real_market.grid(symbol)

        def last_tick(self, symbol: str) -> Any:
            return real_market.last_tick(symbol)

    sub = svc.hub.connect()
    try:
        svc.market = CountingMarket()
        sub.close(1013, "too far behind")
        svc.send_snapshots(sub, [f"grid:{server.symbol}"], None)
        assert built == []
        open_sub = svc.hub.connect()
        svc.send_snapshots(open_sub, [f"grid:{server.symbol}"], None)
        assert built == [server.symbol]
        svc.hub.disconnect(open_sub)
    finally:
        svc.market = real_market
        svc.hub.disconnect(sub)


# ── defect 6: what is echoed ──────────────────────────────────────────────────────────────────


async def test_req_id_is_echoed_only_up_to_64_characters(server: Server) -> None:
    async with connect_ws(server) as ws:
        await ws.send({"type": "ping", "req_id": "a" * 64})
        assert (await ws.next_of_type("pong"))["req_id"] == "a" * 64
        await ws.send({"type": "ping", "req_id": "b" * 65})
        error = await ws.next_of_type("error")
        assert error["req_id"] is None  # old code echoed it whatever its size
        assert error["error"]["code"] == "invalid_request"
        await ws.send({"type": "place_bet", "req_id": "c" * 65})
        error = await ws.next_of_type("error")
        assert error["req_id"] is None
        await ws.send({"type": "place_bet", "req_id": "r-ok", "amount": -1})
        error = await ws.next_of_type("error")
        assert error["req_id"] == "r-ok"  # a short req_id of a refused frame is still echoed


async def test_every_reply_to_hostile_pings_is_small(server: Server) -> None:
    """Replies are bounded whatever the frame carried, so a client that does not read holds at
    most `ws_queue` small frames (old code: a 16 MiB req_id echoed per ping, ~1 GiB queued)."""
    hostile = [
        {"type": "ping", "req_id": "r" * 15000},
        {"type": "ping", "req_id": "r" * 100, "extra": "e" * 10000},
        {"type": "x" * 15000},
        {"type": "subscribe", "channels": ["c" * 15000]},
        {"type": "subscribe", "channels": ["prices:" + "Z" * 50]},  # valid shape, unknown
        {"type": "auth", "token": "t" * 15000},
    ]
    async with connect_ws(server) as ws:
        for frame in hostile:
            await ws.send(frame)
            with trio.fail_after(5):
                reply = await ws.ws.get_message()
            assert len(reply) <= 512, (frame.get("type", "")[:20], len(reply))
            assert json.loads(reply)["type"] == "error"


# ── the hello timeout ─────────────────────────────────────────────────────────────────────────


async def test_a_socket_that_never_authenticates_or_subscribes_is_closed_1008(
    tmp_path: Path,
) -> None:
    async with (
        serving(tmp_path, server__ws_hello_timeout_s=0.5) as server,
        connect_ws(server) as subscribed,
        connect_ws(server) as silent,
    ):
        await subscribed.subscribe(f"prices:{server.symbol}")
        await silent.ping()  # a ping is not a hello
        assert await close_code_of(silent) == 1008
        # The one that subscribed is still served after the silent one's deadline.
        await subscribed.ping()
        tick = server.push(server.last_price + 100)
        await subscribed.next_of_type("price", where=lambda f: f["ts"] == tick.ts)
