"""The standalone price-feed simulator (`tap feed-sim`): GBM ticks over a WebSocket server.

It decides the price path (one seeded `GbmSim` shared by every client, so every client sees
the same prices at the same times) and the wire format: one text frame per tick, the same
`price` message the public WebSocket sends (`{"type":"price","symbol","ts","price"}`, price in
increments, ts in ms). It leaves everything else to the client: a tap server points
`feed.source = "ws-sim"` at it to exercise the real network path (connect, parse, reconnect)
without an exchange.

Every tick of the schedule (`start + k · tick_ms`) is sent, even when this server's event loop
was late: the missed ticks follow at once, stamped with their scheduled times, so a stall here is
a burst of on-time-stamped ticks for the receiver, never a hole in the feed.

Each client has its own bounded queue and writer task; a client that stops reading loses ticks
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

# Ticks buffered per client: a minute at the default 250 ms. After a stall of this server the
# missed ticks of the schedule go out in one burst (see below); a client that is reading must
# receive all of them, or the hole would look like a gap of the feed and void bets downstream.
CLIENT_QUEUE = 256


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
    `clock` defaults to wall time; tick k is stamped `start + k · tick_ms` of that clock.
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
            # The path is a function of time: every scheduled tick goes out, each stamped with
            # its scheduled time. After a stall of ours the late ones follow at once (one
            # checkpoint apart) rather than being skipped: a skipped tick is a gap in the feed.
            at += tick_ms
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
