"""The ingest actor: one price feed in, integer ticks out to every consumer (DESIGN rule 11).

It decides where ticks come from (the in-process simulator, a WebSocket feed, or a test's
`ManualFeed`), when a feed is dead and how long to wait before reconnecting, and how each
consumer receives ticks. What a message means is decided by `tap.feeds` (pure); what a tick
means is decided by the consumers.

Delivery, per output — the one choice that matters for money:

- **lossless** outputs (the resolver, the batcher's tick store, the breaker: anything whose
  decision protects money) get *every* tick, in order, with `await send()`. A bet wins iff some
  tick touched its band, so a resolver that silently missed a tick could settle a winning bet as
  lost; and the resolver must see exactly the ticks the log stores, or its decisions cannot be
  re-checked from the log.
  Dropping is therefore not an option, and neither is an unbounded buffer. Ingest waits instead:
  give these channels a deep buffer (seconds of ticks) so a burst never blocks, and if a
  money-path consumer is stuck for longer than that, ingest stops. That is deliberate: the
  breaker stops hearing ticks, goes stale and opens, so no new bet is accepted while settlement
  is behind. No tick is lost by waiting: a network feed's messages wait in the socket, and the
  simulator emits every tick of its schedule once it may go on (each stamped with its scheduled
  time). A gap is judged from the ticks' own timestamps (`tap.resolver`), never from when we
  got round to them, so a stall of ours is not a feed gap. The dead-feed timer only runs while
  ingest is waiting on the socket, so a stall downstream is never mistaken for a dead feed; and
  when it expires ingest looks once more (`DEAD_RECHECK_S`) before hanging up, so a freeze of our
  own event loop longer than `dead_after_ms` does not throw away what the socket holds.
- **lossy** outputs (market data: the hub's price frames, the pricing/grid actor) get ticks with
  `send_nowait`; a full channel drops that tick for that consumer and counts it in
  `FeedStatus.dropped`. These consumers only care about the latest price, and one of them being
  slow must never delay the others or the money path.

Lossy outputs are served first, so market data is never held back by a lossless consumer that is
momentarily full. Ticks leave as increments and ms; a tick older than the last one delivered is
dropped (exchanges may resend on reconnect), equal timestamps pass. A tick from an exchange
stamped more than `MAX_FUTURE_MS` ahead of our clock is refused and counted, never forwarded:
accepted, it would make every later real tick "out of order" and its timestamp would close and
void every open column in the resolver.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
import trio_websocket

from tap.config import Config
from tap.feeds import (
    FeedParseError,
    GbmSim,
    Parser,
    WireFormat,
    backoff_ms,
    default_instrument,
    make_parser,
    subscribe_message,
)
from tap.messages import Tick
from tap.runtime.clock import Clock
from tap.runtime.metrics import FEED_RECONNECTS, FEED_STALENESS, TICKS

log = logging.getLogger(__name__)

STALENESS_REFRESH_S = 1.0  # how often the staleness gauge is recomputed between ticks
MANUAL_FEED_CAPACITY = 1024  # ticks a test may push ahead of ingest before push() refuses
PARSE_ERROR_LOG_EVERY = 1000  # a feed spewing garbage logs its first bad message, then 1 in N
DISCONNECT_TIMEOUT_S = 1.0  # a closing handshake that takes longer is abandoned: the feed is gone
# After the dead-feed timer expires, how long ingest still waits for a message before hanging up.
# A frozen event loop (ours) expires the timer with the feed's messages waiting in the socket;
# once the loop runs they are read within a few scheduler rounds, far inside this.
DEAD_RECHECK_S = 0.5
# How far ahead of our clock an exchange's tick may be stamped. An NTP-synced host and an
# exchange's matching engine disagree by milliseconds, tens at worst; network delay only makes
# ticks arrive *older*. 2 s is two orders of magnitude above that honest skew and far below what
# a wrong timestamp looks like (µs read as ms is ~50,000 years ahead; a mis-set clock is off by
# minutes or hours), so a refused tick is always a bad one, and one accepted tick can end at
# most the column that closes within the next 2 s, never a column still seconds away.
MAX_FUTURE_MS = 2_000
FUTURE_LOG_EVERY = 1000  # a feed stamping every tick in the future logs the first, then 1 in N

_WIRE_FORMAT: dict[str, WireFormat] = {
    "ws-sim": "sim",
    "binance": "binance",
    "coinbase": "coinbase",
}


@dataclass(frozen=True)
class TickOutput:
    """One consumer of ticks and how it receives them (see the module docstring)."""

    name: str  # for logs and `FeedStatus.dropped`: "resolver", "store", "hub", …
    channel: trio.MemorySendChannel[Tick]
    lossless: bool  # True: every tick, awaited. False: send_nowait, drops counted.


class ManualFeed:
    """A feed a test drives by hand (`feed.source = "manual"`): each `push` becomes one tick.

    Ticks go through the same fan-out as any feed's. `push` is synchronous so a test can call
    it anywhere; it raises `trio.WouldBlock` if the test outruns ingest by more than
    `capacity` ticks, and `ValueError` for a timestamp earlier than the previous push (ingest
    would drop it, and a silently dropped tick makes for a confusing test).

    Its ticks are exempt from the `MAX_FUTURE_MS` guard: a test resolves a bet on a column that
    has not ended yet by pushing ticks stamped ahead of the real clock (`tests/e2e.py`), and a
    test's timestamps are deliberate, not a misread exchange message.
    """

    def __init__(self, clock: Clock, symbol: str, capacity: int = MANUAL_FEED_CAPACITY) -> None:
        self.clock = clock
        self.symbol = symbol
        self._send, self.receive = trio.open_memory_channel[Tick](capacity)
        self._last_ts: int | None = None

    def push(self, price: int, ts: int | None = None) -> Tick:
        """Emit a tick at `price` increments, at `ts` ms (default: the clock's now)."""
        at = self.clock.now_ms() if ts is None else ts
        if price <= 0:
            raise ValueError(f"price must be positive, got {price}")
        if self._last_ts is not None and at < self._last_ts:
            raise ValueError(f"ts {at} is before the previous tick's {self._last_ts}")
        tick = Tick(symbol=self.symbol, ts=at, price=price)
        self._send.send_nowait(tick)
        self._last_ts = at
        return tick


class FeedStatus:
    """What ingest knows about its feed, for `/healthz` and `/readyz`. Written only by ingest."""

    def __init__(self, source: str, symbol: str, manual: ManualFeed | None) -> None:
        self.source = source
        self.symbol = symbol
        self.manual = manual  # the feed to push to when source = "manual"
        self.connected = False
        self.last_tick: Tick | None = None
        self.last_tick_at: int | None = None  # clock ms when ingest delivered it
        self.reconnects = 0
        self.parse_errors = 0
        self.out_of_order = 0
        self.rejected_future = 0  # ticks stamped more than MAX_FUTURE_MS ahead of our clock
        self.dropped: dict[str, int] = {}  # per lossy output

    def stale_for_ms(self, now_ms: int) -> int | None:
        """ms since the last tick was delivered, None before the first."""
        return None if self.last_tick_at is None else max(0, now_ms - self.last_tick_at)


class _Fanout:
    def __init__(
        self,
        clock: Clock,
        outputs: Sequence[TickOutput],
        status: FeedStatus,
        max_future_ms: int | None = MAX_FUTURE_MS,
    ) -> None:
        self.clock = clock
        self.max_future_ms = max_future_ms  # None: trust the timestamps (the manual feed)
        self.lossy = [o for o in outputs if not o.lossless]
        self.lossless = [o for o in outputs if o.lossless]
        self.status = status
        self.ticks = TICKS.labels(status.symbol)
        self.staleness = FEED_STALENESS.labels(status.symbol)
        for o in self.lossy:
            status.dropped[o.name] = 0

    async def deliver(self, tick: Tick) -> bool:
        """Hand `tick` to every output; False if it was refused (older than the last, or from
        the future) and went nowhere."""
        now = self.clock.now_ms()
        if self.max_future_ms is not None and tick.ts > now + self.max_future_ms:
            self.status.rejected_future += 1
            if self.status.rejected_future % FUTURE_LOG_EVERY == 1:
                log.warning(
                    "ingest: refused tick #%d stamped %d ms ahead of our clock (at most %d): %r",
                    self.status.rejected_future,
                    tick.ts - now,
                    self.max_future_ms,
                    tick,
                )
            return False
        last = self.status.last_tick
        if last is not None and tick.ts < last.ts:
            self.status.out_of_order += 1
            return False
        self.status.last_tick = tick
        self.status.last_tick_at = now
        self.ticks.inc()
        self.staleness.set(0)
        for out in list(self.lossy):
            try:
                out.channel.send_nowait(tick)
            except trio.WouldBlock:
                self.status.dropped[out.name] += 1
                if self.status.dropped[out.name] == 1:
                    log.warning("ingest: %s is lagging; dropping its ticks", out.name)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.warning("ingest: %s stopped listening; no more ticks for it", out.name)
                self.lossy.remove(out)
        for out in self.lossless:
            # A closed lossless consumer raises here and ends ingest: the money path is gone.
            await out.channel.send(tick)
        return True


async def run(
    cfg: Config,
    clock: Clock,
    outputs: Sequence[TickOutput],
    *,
    manual: ManualFeed | None = None,
    rand: Callable[[], float] = random.random,
    task_status: trio.TaskStatus[FeedStatus] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ingest `cfg.feed` into `outputs` until cancelled.

    Starts with a `FeedStatus` (its `.manual` is the `ManualFeed` to push to when
    `feed.source = "manual"`: the one passed in, or a new one). `rand` is the uniform draw
    behind the reconnect jitter; tests pass a constant. A feed symbol that is not a market, or
    a `feed.url` that is not ws:// or wss://, raises before starting: no retry fixes those.
    """
    feed = cfg.feed
    market = cfg.market(feed.symbol)
    if market is None:
        raise ValueError(f"feed.symbol {feed.symbol!r} is not one of the configured markets")
    if feed.source in _WIRE_FORMAT and urlsplit(feed.url).scheme not in ("ws", "wss"):
        raise ValueError(f"feed.url {feed.url!r} is not a ws:// or wss:// URL")
    if feed.fallback_url and urlsplit(feed.fallback_url).scheme not in ("ws", "wss"):
        raise ValueError(f"feed.fallback_url {feed.fallback_url!r} is not a ws:// or wss:// URL")
    if feed.source == "manual" and manual is None:
        manual = ManualFeed(clock, feed.symbol)
    status = FeedStatus(feed.source, feed.symbol, manual if feed.source == "manual" else None)
    fan = _Fanout(clock, outputs, status, None if feed.source == "manual" else MAX_FUTURE_MS)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_refresh_staleness, clock, status)
        task_status.started(status)
        if feed.source == "sim":
            await _run_sim(cfg, clock, fan)
        elif feed.source == "manual":
            assert status.manual is not None
            await _run_manual(status.manual, fan)
        else:
            fmt = _WIRE_FORMAT[feed.source]
            instrument = feed.instrument or default_instrument(fmt, feed.symbol)
            parser = make_parser(
                fmt, symbol=feed.symbol, instrument=instrument, price_scale=market.price_scale
            )
            await _run_websocket(cfg, fan, parser, subscribe_message(fmt, instrument), rand)
        nursery.cancel_scope.cancel()


async def _refresh_staleness(clock: Clock, status: FeedStatus) -> None:
    """Keep the staleness gauge honest while no tick arrives (ticks themselves reset it)."""
    gauge = FEED_STALENESS.labels(status.symbol)
    since = clock.now_ms()
    while True:
        await trio.sleep(STALENESS_REFRESH_S)
        now = clock.now_ms()
        last = status.last_tick_at if status.last_tick_at is not None else since
        gauge.set(max(0, now - last) / 1000.0)


async def _run_sim(cfg: Config, clock: Clock, fan: _Fanout) -> None:
    """The built-in simulator: one GBM tick every `sim_tick_ms` of the process clock.

    The path is a function of time: tick k is at `start + k · sim_tick_ms`, priced by the path
    at that instant, and *every* scheduled tick is emitted. When we are late — our own event loop
    stalled, or a lossless consumer held ingest back — the ticks whose time has passed follow at
    once, each stamped with its scheduled time, before the schedule is waited on again. Skipping
    them instead (as this once did) left a hole in the tick log that was ours, not the feed's,
    and the resolver voided every bet it overlapped: a stall anyone could provoke would refund
    losing bets (issue 9, defect 4). A catch-up burst is bounded by the lossless consumers: each
    tick is awaited, so ingest never runs further ahead of them than their buffers.
    """
    feed = cfg.feed
    fan.status.connected = True
    sim = GbmSim(feed.sim_seed, feed.sim_sigma, feed.sim_tick_ms, feed.sim_start_price)
    at = clock.now_ms()
    while True:
        await fan.deliver(Tick(symbol=feed.symbol, ts=at, price=sim.next(at)))
        at += feed.sim_tick_ms
        # A deadline already past returns after one checkpoint: other tasks still get their turn
        # between catch-up ticks, and the next scheduled tick is emitted at once.
        await clock.sleep_until_ms(at)


async def _run_manual(manual: ManualFeed, fan: _Fanout) -> None:
    fan.status.connected = True
    async for tick in manual.receive:
        await fan.deliver(tick)


async def _run_websocket(
    cfg: Config,
    fan: _Fanout,
    parser: Parser,
    subscribe: bytes | None,
    rand: Callable[[], float],
) -> None:
    """Connect, read, and reconnect forever with exponential backoff and full jitter.

    The backoff attempt counter resets only after a connection delivered a tick: a server that
    accepts and hangs up at once keeps backing off instead of being hammered. With a
    `feed.fallback_url`, each reconnect goes to the other URL: the one that just failed is the
    least likely to answer, and alternating needs no health state that could itself be wrong.
    """
    feed = cfg.feed
    urls = [feed.url, *([feed.fallback_url] if feed.fallback_url else [])]
    reconnects = FEED_RECONNECTS.labels(feed.source)
    attempt = 0
    which = 0
    while True:
        if await _session(cfg, fan, parser, subscribe, urls[which]):
            attempt = 0
        which = (which + 1) % len(urls)
        wait_ms = backoff_ms(attempt, feed.backoff_initial_ms, feed.backoff_max_ms, rand())
        attempt += 1
        log.info(
            "ingest: %s feed lost; reconnecting to %s in %d ms", feed.source, urls[which], wait_ms
        )
        await trio.sleep(wait_ms / 1000)
        reconnects.inc()
        fan.status.reconnects += 1


async def _session(
    cfg: Config, fan: _Fanout, parser: Parser, subscribe: bytes | None, url: str
) -> bool:
    """One connection to `url`, until it closes, fails or goes silent. True if it delivered a
    tick."""
    feed = cfg.feed
    dead_after_s = feed.dead_after_ms / 1000
    delivered = False
    try:
        async with trio_websocket.open_websocket_url(
            url,
            connect_timeout=dead_after_s,
            disconnect_timeout=min(DISCONNECT_TIMEOUT_S, dead_after_s),
        ) as ws:
            fan.status.connected = True
            if subscribe is not None:
                await ws.send_message(subscribe.decode())
            while True:
                message: str | bytes | None = None
                with trio.move_on_after(dead_after_s):
                    message = await ws.get_message()
                if message is None:
                    # The timer also expires when *our* loop was frozen past it; the socket then
                    # holds what the feed sent meanwhile, and hanging up would throw it away (a
                    # hole in the tick log: a gap we made, voiding bets). Look once more, with
                    # the loop running, before calling the feed dead.
                    with trio.move_on_after(min(DEAD_RECHECK_S, dead_after_s)):
                        message = await ws.get_message()
                if message is None:
                    log.warning("ingest: no message for %d ms; feed is dead", feed.dead_after_ms)
                    return delivered
                try:
                    tick = parser(message)
                except FeedParseError as e:
                    fan.status.parse_errors += 1
                    if fan.status.parse_errors % PARSE_ERROR_LOG_EVERY == 1:
                        log.warning(
                            "ingest: skipped bad feed message #%d: %s", fan.status.parse_errors, e
                        )
                    continue
                if tick is not None and await fan.deliver(tick):
                    delivered = True
    except (trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as e:
        log.info("ingest: feed connection ended: %r", e)
    finally:
        fan.status.connected = False
    return delivered
