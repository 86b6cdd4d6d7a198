"""The standalone price-feed simulator (`tap feed-sim`): GBM ticks over a WebSocket server.

It decides the price path (one seeded `GbmSim` shared by every client, so every client sees
the same prices at the same times) and the wire format: one text frame per tick, the same
`price` message the public WebSocket sends (`{"type":"price","symbol","ts","price"}`, price in
increments, ts in ms). It leaves everything else to the client: a tap server points
`feed.source = "ws-sim"` at it to exercise the real network path (connect, parse, reconnect)
without an exchange.

Each client has its own small queue and writer task; a client that stops reading loses ticks
(its queue is full, the newest are dropped for it) and never slows the broadcast for the rest.
Messages a client sends are read and ignored, so a chatty client cannot wedge its connection.
"""

from __future__ import annotations

import logging

import msgspec
import trio
import trio_websocket

from tap.feeds import GbmSim
from tap.messages import WsPrice
from tap.runtime.clock import Clock

log = logging.getLogger(__name__)

CLIENT_QUEUE = 16  # ticks buffered per client: a few seconds of jitter at the default 250 ms


async def serve_feed_sim(
    host: str,
    port: int,
    seed: int,
    sigma: float,
    tick_ms: int,
    start_price: int,
    *,
    symbol: str = "BTC-USD",
    clock: Clock | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve GBM ticks on `ws://host:port/` (any path) until cancelled.

    Starts with the bound port (the real one when `port` is 0). `host` should be an address,
    not a name that resolves to several (with port 0 each listener would get its own port).
    `clock` defaults to wall time; the tick timestamps are the clock's ms at each tick.
    """
    clock = clock or Clock()
    sim = GbmSim(seed, sigma, tick_ms, start_price)
    clients: set[trio.MemorySendChannel[str]] = set()

    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        send, receive = trio.open_memory_channel[str](CLIENT_QUEUE)
        clients.add(send)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ignore_client_messages, ws, nursery.cancel_scope)
                nursery.start_soon(_write_ticks, ws, receive, nursery.cancel_scope)
        finally:
            clients.discard(send)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handle, host, port, None)
        bound = server.listeners[0]
        bound_port = bound.port if isinstance(bound, trio_websocket.Endpoint) else port
        task_status.started(bound_port)
        log.info("feed-sim: serving %s on ws://%s:%d/", symbol, host, bound_port)
        at = clock.now_ms()
        while True:
            tick = WsPrice(symbol=symbol, ts=at, price=sim.next(at))
            frame = msgspec.json.encode(tick).decode()
            for client in list(clients):
                try:
                    client.send_nowait(frame)
                except trio.WouldBlock:
                    pass  # this client is not reading: it misses this tick, nobody else does
            at = max(at + tick_ms, clock.now_ms())
            await clock.sleep_until_ms(at)


async def _write_ticks(
    ws: trio_websocket.WebSocketConnection,
    frames: trio.MemoryReceiveChannel[str],
    done: trio.CancelScope,
) -> None:
    try:
        async for frame in frames:
            await ws.send_message(frame)
    except trio_websocket.ConnectionClosed:
        done.cancel()


async def _ignore_client_messages(
    ws: trio_websocket.WebSocketConnection, done: trio.CancelScope
) -> None:
    """Drain what the client sends (subscribe messages, garbage) and notice when it leaves."""
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        done.cancel()
