"""The bus between the core and its edges: three Redis Streams, and the actors at either end.

```
 edge ─ forwarder ─► <prefix>:bus:requests ─(consumer group "core")─► intake ─► writer
 edge ◄─ follower ◄─ <prefix>:bus:committed ◄─ relay ◄─ committed fan-out ◄──────┘
 edge ◄─ follower ◄─ <prefix>:bus:market    ◄─ market relay ◄─ market · breaker · heartbeat
```

It decides how the writer's requests and their verdicts travel between processes, and what an
edge may conclude from silence or a gap. It leaves every decision about money to the writer: a
request may arrive twice (a core that died between commit and acknowledgement reads its unacked
entries again at startup) and the writer answers a second copy with what the first one made (the
ledger's UNIQUE (address, nonce) and `ref`), so redelivery is harmless.

- **Requests, edge → core** (lossless): the edge's desk hands a request to its forwarder with a
  non-blocking send, exactly as it hands it to an in-process writer; the forwarder XADDs every
  waiting request in one pipeline, with an XLEN that tells the edge how far the core is behind
  (past `bus.max_backlog` the desk answers 503 at once). The core's intake reads with
  XREADGROUP, first its own pending entries (read by an earlier run, never acknowledged), then
  new ones, and sends each to the writer, waiting when the writer is full (the stream is the
  buffer). An entry is acknowledged (XACK + XDEL) only in the same pipeline that publishes its
  verdict, after the commit.
- **Verdicts, core → edges** (lossless or loudly lossy): each committed batch is one
  `CommittedBatch` with the core's `epoch` and a `seq`; the stream is capped (`MAXLEN ~`). An edge
  that sees a seq it did not expect, or a new epoch after an old one, may have missed account
  events: it calls `on_gap` (the edge closes its WS clients 1013; they resync over HTTP).
- **Market data, core → edges** (lossy, newest wins): every tick the core's market accepted with
  the σ and interval it prices with, breaker changes, and a `CoreAlive` heartbeat every
  `HEARTBEAT_MS` carrying the breaker state and the request backlog. An edge that has heard
  nothing for `bus.core_silence_ms` treats the breaker as open (`CoreLink`).

Blocking reads (XREAD/XREADGROUP BLOCK) each use a dedicated connection in a worker thread; every
write goes through the shared `RedisGateway` pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from actors.fanout import CommittedFanout, Lagged
from tap.config import BusConfig, RedisConfig
from tap.hotstate import HotStateUnavailable
from tap.messages import (
    AdminCredit,
    BetConfirmed,
    BetRejected,
    BreakerChanged,
    BreakerStateName,
    BusRequest,
    Committed,
    CommittedBatch,
    CoreAlive,
    Deposit,
    EntryPosted,
    MarketBusMessage,
    MarketState,
    PlaceBet,
    Withdrawal,
    WriterRequest,
)
from tap.runtime import metrics
from tap.runtime.clock import Clock
from tap.store.redis_link import Gateway as RedisGateway
from tap.store.redis_link import RedisCommand

log = logging.getLogger("tap.bus")

GROUP = "core"  # the consumer group of the requests stream (one core reads it)
CONSUMER = "core"
FIELD = "m"  # every stream entry has one field: the message, JSON
BLOCK_MS = 250  # a blocking read returns at once with data, else after this (shutdown bound)
READ_COUNT = 512  # entries per read: a writer batch's worth
HEARTBEAT_MS = 250  # CoreAlive period; an edge's silence threshold is a few of these
MARKET_MAXLEN = 1_000  # market stream cap: newest wins, a few seconds of history is plenty
BACKOFF_S = (0.1, 2.0)  # a failing read is retried after 0.1 s, doubling up to 2 s

_encoder = msgspec.json.Encoder()
_requests = msgspec.json.Decoder(BusRequest)
_committed = msgspec.json.Decoder(CommittedBatch)
_market = msgspec.json.Decoder(MarketBusMessage)


@dataclass(frozen=True, slots=True)
class BusKeys:
    requests: str
    committed: str
    market: str

    @classmethod
    def of(cls, prefix: str) -> BusKeys:
        return cls(f"{prefix}:bus:requests", f"{prefix}:bus:committed", f"{prefix}:bus:market")


def request_key(request: WriterRequest | Committed) -> str | None:
    """What names a request and its verdict: a bet's id, a money request's `ref`."""
    match request:
        case PlaceBet(bet_id=bet_id):
            return bet_id
        case BetConfirmed(bet=bet) | BetRejected(bet=bet):
            return bet.bet_id
        case Deposit(ref=ref) | Withdrawal(ref=ref) | AdminCredit(ref=ref) | EntryPosted(ref=ref):
            return ref
        case _:
            return None


def new_epoch() -> str:
    """One run of the core: edges tell a restart (and the events it may have lost) by it."""
    return secrets.token_hex(6)


# ── blocking reads on a dedicated connection ────────────────────────────────────────────────


class _BlockingReader:
    """One connection for blocking stream reads, used by one worker thread at a time. A failed
    call drops the connection; the next call opens a fresh one."""

    def __init__(self, settings: RedisConfig, name: str) -> None:
        self._settings = settings
        self._name = name
        self._client: redis.Redis | None = None

    def call(self, *args: Any) -> Any:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self._settings.url,
                decode_responses=False,
                socket_timeout=(BLOCK_MS + self._settings.socket_timeout_ms) / 1000,
                socket_connect_timeout=self._settings.connect_timeout_ms / 1000,
                retry=Retry(NoBackoff(), 0),  # the caller's loop is the retry policy
                client_name=self._name,
            )
        try:
            return cast(Any, self._client).execute_command(*args)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class _Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_S[0]

    async def wait(self) -> None:
        await trio.sleep(self.delay)
        self.delay = min(2 * self.delay, BACKOFF_S[1])

    def reset(self) -> None:
        self.delay = BACKOFF_S[0]


def _entries(reply: Any) -> list[tuple[str, str, bytes | None]]:
    """(stream, entry id, payload) of an XREAD/XREADGROUP reply, as redis-py parses it: a list
    of [stream, [(id, {field: value}), …]]. A pending entry deleted meanwhile has no fields."""
    out: list[tuple[str, str, bytes | None]] = []
    for stream, items in reply or ():
        name = stream.decode()
        for entry_id, fields in items:
            payload = None
            if fields:  # redis-py hands the fields over as a dict
                payload = fields.get(FIELD.encode())
            out.append((name, entry_id.decode(), payload))
    return out


# ── core: the intake ───────────────────────────────────────────────────────────────────────


@dataclass
class Inflight:
    """Requests the intake handed to the writer and that await their verdict: key → stream ids
    (two only when a redelivered entry meets a fresh one for the same key)."""

    ids: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, entry_id: str) -> None:
        self.ids.setdefault(key, []).append(entry_id)

    def take(self, key: str) -> list[str]:
        return self.ids.pop(key, [])

    def __len__(self) -> int:
        return len(self.ids)


async def run_intake(
    settings: RedisConfig,
    gateway: RedisGateway,
    keys: BusKeys,
    writer: trio.MemorySendChannel[WriterRequest],
    inflight: Inflight,
    on_request: Callable[[BusRequest], None] = lambda r: None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read the requests stream into the writer until cancelled (module text). `on_request`
    sees each request just before the writer does (the core's pending-bets map)."""
    reader = _BlockingReader(settings, "tap-core-intake")
    backoff = _Backoff()
    task_status.started()
    after = "0"  # first the entries an earlier run read and never acknowledged
    try:
        async with writer:
            while True:
                try:
                    reply = await trio.to_thread.run_sync(
                        reader.call,
                        "XREADGROUP", "GROUP", GROUP, CONSUMER, "COUNT", READ_COUNT,
                        "BLOCK", BLOCK_MS, "STREAMS", keys.requests, after,
                    )  # fmt: skip
                except redis.ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    await _create_group(gateway, keys)  # first start, or Redis lost its data
                    after = "0"
                    continue
                except redis.RedisError as e:
                    log.warning("bus intake: read failed (%r); retrying", e)
                    await backoff.wait()
                    continue
                backoff.reset()
                entries = _entries(reply)
                if after != ">":
                    if not entries:
                        after = ">"  # the backlog of an earlier run is done: new entries now
                        continue
                    after = entries[-1][1]
                poison: list[str] = []
                for _, entry_id, payload in entries:
                    try:
                        if payload is None:
                            raise ValueError("entry deleted")
                        request = _requests.decode(payload)
                    except (msgspec.DecodeError, ValueError) as e:
                        log.error("bus intake: dropping unreadable entry %s (%s)", entry_id, e)
                        poison.append(entry_id)
                        continue
                    key = request_key(request)
                    assert key is not None
                    inflight.add(key, entry_id)
                    on_request(request)
                    await writer.send(request)
                if poison:
                    await _acknowledge(gateway, keys, poison)
    finally:
        reader.close()


async def waiting_holds(gateway: RedisGateway, keys: BusKeys) -> dict[str, int]:
    """Per address, the stakes and withdrawals waiting in the requests stream (handed over by
    an edge, not yet committed): their holds are in the hot state and not yet in the ledger.

    A rebuild of the hot state from the ledger subtracts them, or it would give those holds back
    and read high by them until they commit. Read *after* the ledger: a request committed in
    between is then counted in both, which reads low (the safe direction) until the next
    rebuild. Pages of `READ_COUNT`; the stream is bounded by the edges' `bus.max_backlog`."""
    holds: dict[str, int] = {}
    after = "-"
    while True:
        entries = await gateway.call(
            RedisCommand(("XRANGE", keys.requests, after, "+", "COUNT", READ_COUNT))
        )
        for entry_id, fields in entries:
            after = "(" + entry_id
            try:  # redis-py hands the fields over as a dict
                request = _requests.decode(fields[FIELD])
            except (msgspec.DecodeError, KeyError, TypeError):
                continue  # the intake drops it too
            if isinstance(request, PlaceBet | Withdrawal):
                holds[request.address] = holds.get(request.address, 0) + request.amount
        if len(entries) < READ_COUNT:
            return holds


async def _create_group(gateway: RedisGateway, keys: BusKeys) -> None:
    try:
        await gateway.call(
            RedisCommand(("XGROUP", "CREATE", keys.requests, GROUP, "0", "MKSTREAM"))
        )
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    except HotStateUnavailable:
        await trio.sleep(BACKOFF_S[0])


async def _acknowledge(gateway: RedisGateway, keys: BusKeys, ids: Sequence[str]) -> None:
    try:
        await gateway.call_many(
            (
                RedisCommand(("XACK", keys.requests, GROUP, *ids)),
                RedisCommand(("XDEL", keys.requests, *ids)),
            )
        )
    except HotStateUnavailable:
        pass  # read again at the next start and dropped again


# ── core: the relays ───────────────────────────────────────────────────────────────────────


async def run_relay(
    cfg: BusConfig,
    gateway: RedisGateway,
    keys: BusKeys,
    fanout: CommittedFanout,
    inflight: Inflight,
    epoch: str,
    *,
    capacity: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every committed batch → one `CommittedBatch` on the committed stream, in the same
    pipeline as the acknowledgement of the requests it answers. While Redis is unreachable the
    batches wait in this subscription (`capacity` events); past that the subscription lags, the
    events in between are lost to the edges and `seq` skips one so that they notice."""
    seq = 0
    sub = fanout.subscribe(capacity, "bus-relay")
    task_status.started()
    backoff = _Backoff()
    while True:
        try:
            events = await sub.receive_batch(READ_COUNT)
        except Lagged:
            log.error("bus relay lagged: the edges will see a gap and resync")
            sub = fanout.subscribe(capacity, "bus-relay")
            seq += 1
            continue
        if not events:
            return  # the writer has stopped
        batch = CommittedBatch(epoch=epoch, seq=seq, events=tuple(events))
        acked = [i for e in events if (k := request_key(e)) is not None for i in inflight.take(k)]
        commands = [
            RedisCommand(
                ("XADD", keys.committed, "MAXLEN", "~", cfg.committed_maxlen, "*",
                 FIELD, _encoder.encode(batch).decode())
            )
        ]  # fmt: skip
        if acked:
            commands.append(RedisCommand(("XACK", keys.requests, GROUP, *acked)))
            commands.append(RedisCommand(("XDEL", keys.requests, *acked)))
        while True:
            try:
                await gateway.call_many(commands)
                break
            except (HotStateUnavailable, redis.ResponseError) as e:
                # A refusal by Redis itself (a key of the wrong type, a script error) is logged
                # and retried like an outage: the relay degrades (edges' waiters time out with
                # 503), it does not end the core.
                _log_refusal("relay", e)
                await backoff.wait()
        backoff.reset()
        seq += 1


async def run_market_relay(
    gateway: RedisGateway,
    keys: BusKeys,
    clock: Clock,
    epoch: str,
    incoming: trio.MemoryReceiveChannel[MarketState | BreakerChanged],
    breaker: Callable[[], tuple[BreakerStateName, str]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ticks (with σ), breaker changes and a heartbeat onto the market stream. Lossy by design:
    what Redis does not take in time is dropped (the next tick or heartbeat replaces it)."""
    backlog = 0
    task_status.started()
    async with incoming:
        while True:
            messages: list[MarketBusMessage] = []
            with trio.move_on_after(HEARTBEAT_MS / 1000):
                messages.append(await incoming.receive())
            while len(messages) < READ_COUNT:
                try:
                    messages.append(incoming.receive_nowait())
                except trio.WouldBlock:
                    break
                except trio.EndOfChannel:
                    return
            state, reason = breaker()
            messages.append(
                CoreAlive(
                    epoch=epoch, at=clock.now_ms(), breaker=state, reason=reason, backlog=backlog
                )
            )
            commands = [
                RedisCommand(
                    ("XADD", keys.market, "MAXLEN", "~", MARKET_MAXLEN, "*",
                     FIELD, _encoder.encode(m).decode())
                )
                for m in messages
            ]  # fmt: skip
            commands.append(RedisCommand(("XLEN", keys.requests)))
            try:
                replies = await gateway.call_many(commands)
                backlog = int(replies[-1])
            except (HotStateUnavailable, redis.ResponseError) as e:
                _log_refusal("market relay", e)  # lossy: the next heartbeat tries again


def _log_refusal(who: str, error: Exception) -> None:
    """An outage is counted; a refusal by Redis itself (e.g. WRONGTYPE) is also logged, since
    no recovery will clear it without an operator."""
    metrics.REDIS_ERRORS.inc()
    if isinstance(error, redis.ResponseError):
        log.error("bus %s: Redis refused a command (%s); retrying", who, error)


def offer(channel: trio.MemorySendChannel[Any], message: Any) -> None:
    """Lossy hand-off: a full channel drops the message (the next one replaces it)."""
    try:
        channel.send_nowait(message)
    except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
        pass


# ── edge: the core as an edge sees it ───────────────────────────────────────────────────────


class CoreLink:
    """What an edge knows of the core: when it last heard it, its breaker, its backlog.

    `state` is the breaker an edge admits with: open while the core is silent for longer than
    `silence_ms` (a dead core confirms nothing: refuse at once rather than queue answers that
    wait out their deadline), else the core's own state. Silence is measured from the time the
    core stamped on its last heartbeat, on this edge's clock (one host, or NTP).
    """

    def __init__(self, clock: Clock, silence_ms: int) -> None:
        self.clock = clock
        self.silence_ms = silence_ms
        self.heard_at: int | None = None
        self.epoch: str | None = None
        self.breaker: BreakerStateName = "open"
        self.reason = "startup"
        self.backlog = 0

    def heard(self, alive: CoreAlive) -> None:
        # The core's own time of the heartbeat (one host, or NTP-synchronized hosts): a
        # heartbeat replayed from the stream at startup does not make a dead core look alive.
        if self.heard_at is not None and alive.at < self.heard_at:
            return
        self.heard_at = alive.at
        self.epoch = alive.epoch
        self.breaker = alive.breaker
        self.reason = alive.reason
        self.backlog = alive.backlog

    def alive(self) -> bool:
        return self.heard_at is not None and self.clock.now_ms() - self.heard_at <= self.silence_ms

    def state(self) -> BreakerStateName:
        return self.breaker if self.alive() else "open"

    def why(self) -> str:
        return self.reason if self.alive() else "core_unreachable"


async def run_core_watch(
    link: CoreLink,
    outputs: Sequence[trio.MemorySendChannel[BreakerChanged]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Turn the link's effective breaker (core silent ⇒ open) into `BreakerChanged` for the
    edge's market mirror and hub, checked every 100 ms, so grids and WS clients see it too."""
    last: BreakerStateName | None = None
    task_status.started()
    while True:
        state = link.state()
        if state != last:
            change = BreakerChanged(state=state, reason=link.why(), at=link.clock.now_ms())
            for out in outputs:
                offer(out, change)
            last = state
        await trio.sleep(0.1)


# ── edge: the forwarder and the follower ─────────────────────────────────────────────────────


class RemoteWriter:
    """The desk's `WriterSender` on an edge: a non-blocking hand-off to the forwarder, refused
    (`trio.WouldBlock`, the desk's 503 overloaded) when the forwarder's queue is full or the core
    is more than `max_backlog` requests behind."""

    def __init__(
        self, send: trio.MemorySendChannel[BusRequest], link: CoreLink, max_backlog: int
    ) -> None:
        self._send = send
        self._link = link
        self._max_backlog = max_backlog
        self.depth = 0  # the requests stream's length after our last XADD

    def send_nowait(self, value: WriterRequest) -> None:
        if max(self.depth, self._link.backlog) >= self._max_backlog:
            raise trio.WouldBlock
        self._send.send_nowait(value)  # type: ignore[arg-type]  # the desk sends bus requests

    def statistics(self) -> tuple[int, int]:
        return max(self.depth, self._link.backlog), self._max_backlog

    def close(self) -> None:
        self._send.close()


async def run_forwarder(
    gateway: RedisGateway,
    keys: BusKeys,
    incoming: trio.MemoryReceiveChannel[BusRequest],
    writer: RemoteWriter,
    fanout: CommittedFanout,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every waiting request → one pipeline of XADDs (and an XLEN). If Redis does not take
    them, each is answered here, locally, as refused `dependency_unavailable` (its waiter hears
    a 503 that says the request may still land: the outcome of a timed-out pipeline is unknown;
    its hold stays until the hot state is rebuilt, the safe direction)."""
    task_status.started()
    async with incoming:
        async for first in incoming:
            batch = [first]
            while len(batch) < READ_COUNT:
                try:
                    batch.append(incoming.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            commands = [
                RedisCommand(("XADD", keys.requests, "*", FIELD, _encoder.encode(r).decode()))
                for r in batch
            ]
            commands.append(RedisCommand(("XLEN", keys.requests)))
            try:
                replies = await gateway.call_many(commands)
                writer.depth = int(replies[-1])
            except (HotStateUnavailable, redis.ResponseError) as e:
                _log_refusal("forwarder", e)
                fanout.publish([_refused(r) for r in batch])


def _refused(request: BusRequest) -> Committed:
    why = "dependency_unavailable"
    if isinstance(request, PlaceBet):
        return BetRejected(bet=request.as_bet("rejected", why), reason=why)
    return EntryPosted(ref=request.ref, entry=None, error=why)


async def run_follower(
    settings: RedisConfig,
    keys: BusKeys,
    fanout: CommittedFanout,
    market: trio.MemorySendChannel[MarketState | BreakerChanged],
    link: CoreLink,
    on_gap: Callable[[str], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read both core → edge streams on one connection until cancelled: committed batches into
    this edge's fan-out (waiters, hub, pending map), market messages into its mirror, heartbeats
    into `link`. `on_gap(why)` when committed events may have been missed (module text)."""
    reader = _BlockingReader(settings, "tap-edge-follower")
    backoff = _Backoff()
    # Committed batches from the newest one on: "started" means every commit from now on is
    # followed (a request this edge hands over later cannot be answered before it). The market
    # stream is short (`MARKET_MAXLEN`) and replayed whole: the mirror starts from the core's
    # latest price and σ, and the breaker from its latest heartbeat.
    committed_after: str | None = None
    market_after = "0-0"
    with contextlib.suppress(redis.RedisError):
        committed_after = await _last_id(reader, keys.committed)
    epoch: str | None = None
    expected = 0
    task_status.started()
    try:
        while True:
            try:
                if committed_after is None:  # Redis was down at startup
                    committed_after = await _last_id(reader, keys.committed)
                reply = await trio.to_thread.run_sync(
                    reader.call,
                    "XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS",
                    keys.committed, keys.market, committed_after, market_after,
                )  # fmt: skip
            except redis.RedisError as e:
                log.warning("bus follower: read failed (%r); retrying", e)
                await backoff.wait()
                continue
            backoff.reset()
            for stream, entry_id, payload in _entries(reply):
                if stream == keys.committed:
                    committed_after = entry_id
                    try:
                        batch = _committed.decode(payload or b"")
                    except msgspec.DecodeError:
                        log.error("bus follower: unreadable committed entry %s", entry_id)
                        on_gap("unreadable entry")
                        continue
                    if epoch is not None and (batch.epoch != epoch or batch.seq != expected):
                        on_gap("core restarted" if batch.epoch != epoch else "events missed")
                    epoch, expected = batch.epoch, batch.seq + 1
                    fanout.publish(batch.events)
                else:
                    market_after = entry_id
                    try:
                        message = _market.decode(payload or b"")
                    except msgspec.DecodeError:
                        log.error("bus follower: unreadable market entry %s", entry_id)
                        continue
                    if isinstance(message, CoreAlive):
                        link.heard(message)
                    else:
                        offer(market, message)
    finally:
        reader.close()


async def _last_id(reader: _BlockingReader, key: str) -> str:
    """The id of a stream's newest entry ("0-0" for none): an edge follows from there."""
    reply = await trio.to_thread.run_sync(reader.call, "XREVRANGE", key, "+", "-", "COUNT", 1)
    return reply[0][0].decode() if reply else "0-0"
