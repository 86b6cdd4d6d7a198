"""The core ⇄ edge bus (`actors/bus.py`) on real Redis, actor by actor.

Pinned: the intake reads what an earlier core read and never acknowledged before anything new
(a core SIGKILLed between reading and committing loses nothing); one unreadable entry is
dropped and the next request still reaches the writer; a verdict is published in the pipeline
that acknowledges and deletes its request (nothing stays pending); an edge's follower calls
`on_gap` for a skipped `seq` and for a new epoch, and not for an unbroken run; the edge's writer
refuses at once past the backlog; a forwarder that cannot reach Redis answers its requests
locally as refused, so no waiter hangs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import msgspec
import pytest
import redis
import trio

from actors import bus, redis_gateway
from actors.fanout import CommittedFanout
from tap.config import Config, RedisConfig
from tap.messages import (
    Bet,
    BetConfirmed,
    BetRejected,
    BreakerChanged,
    CommittedBatch,
    MarketState,
    PlaceBet,
    WriterRequest,
)
from tap.runtime.clock import Clock
from tap.store.redis_hot import SCRIPTS
from tap.store.redis_link import Gateway
from tests.redis_fixtures import redis_config, redis_prefix, redis_url

__all__ = ["redis_config", "redis_prefix", "redis_url"]

pytestmark = pytest.mark.redis

_enc = msgspec.json.Encoder()


def place(n: int) -> PlaceBet:
    return PlaceBet(
        bet_id=f"b{n:04d}", address="0x" + "a" * 40, cell_id="BTC-USD:1:1", symbol="BTC-USD",
        col=1, row=1, t_start=5000, t_end=10_000, price_lo=1000, price_hi=2000, amount=100,
        multiplier_bps=20_000, nonce=f"nonce-{n:012d}", accepted_at=1_000 + n, timestamp=1_000,
        chain_id=1, min_multiplier_bps=0, signature="00" * 64,
    )  # fmt: skip


def confirmed(request: PlaceBet) -> BetConfirmed:
    return BetConfirmed(bet=request.as_bet("confirmed"))


@asynccontextmanager
async def gateway_for(cfg: RedisConfig) -> AsyncIterator[Gateway]:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(redis_gateway.run, cfg, SCRIPTS))
        yield handle
        nursery.cancel_scope.cancel()


def client(cfg: RedisConfig) -> redis.Redis:
    return redis.Redis.from_url(cfg.url)


async def test_the_intake_reads_unacknowledged_entries_first_and_skips_a_bad_one(
    redis_config: Config,
) -> None:
    cfg = redis_config.redis
    keys = bus.BusKeys.of(cfg.prefix)
    r = client(cfg)
    r.xgroup_create(keys.requests, bus.GROUP, "0", mkstream=True)
    for n in range(3):
        r.xadd(keys.requests, {bus.FIELD: _enc.encode(place(n))})
    # An earlier core read all three and died before committing any.
    r.xreadgroup(bus.GROUP, bus.CONSUMER, {keys.requests: ">"}, count=10)
    r.xadd(keys.requests, {bus.FIELD: b"{not json"})
    r.xadd(keys.requests, {bus.FIELD: _enc.encode(place(3))})
    send, receive = trio.open_memory_channel[WriterRequest](16)
    inflight = bus.Inflight()
    seen: list[str] = []
    with trio.fail_after(10):
        async with gateway_for(cfg) as gateway, trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    bus.run_intake, cfg, gateway, keys, send, inflight,
                    lambda req: seen.append(bus.request_key(req) or ""),
                )
            )  # fmt: skip
            got = [await receive.receive() for _ in range(4)]
            while r.xlen(keys.requests) != 4:  # noqa: ASYNC110  # the bad entry is acked, deleted
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert [g.bet_id for g in got if isinstance(g, PlaceBet)] == [place(n).bet_id for n in range(4)]
    assert seen == [place(n).bet_id for n in range(4)]
    assert len(inflight) == 4


async def test_a_verdict_goes_out_with_the_acknowledgement_of_its_request(
    redis_config: Config,
) -> None:
    cfg = redis_config.redis
    keys = bus.BusKeys.of(cfg.prefix)
    r = client(cfg)
    r.xgroup_create(keys.requests, bus.GROUP, "0", mkstream=True)
    for n in range(2):
        r.xadd(keys.requests, {bus.FIELD: _enc.encode(place(n))})
    fanout = CommittedFanout()
    send, receive = trio.open_memory_channel[WriterRequest](16)
    inflight = bus.Inflight()
    with trio.fail_after(10):
        async with gateway_for(cfg) as gateway, trio.open_nursery() as nursery:
            await nursery.start(
                partial(bus.run_relay, redis_config.bus, gateway, keys, fanout, inflight, "e1",
                        capacity=64)
            )  # fmt: skip
            await nursery.start(partial(bus.run_intake, cfg, gateway, keys, send, inflight))
            first, second = await receive.receive(), await receive.receive()
            assert isinstance(first, PlaceBet) and isinstance(second, PlaceBet)
            fanout.publish([confirmed(first), confirmed(second)])
            while r.xlen(keys.requests):  # noqa: ASYNC110  # polling Redis, not a trio state
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert r.xpending(keys.requests, bus.GROUP)["pending"] == 0
    entries = r.xrange(keys.committed)
    assert len(entries) == 1
    batch = msgspec.json.decode(entries[0][1][bus.FIELD.encode()], type=CommittedBatch)
    assert (batch.epoch, batch.seq) == ("e1", 0)
    assert [bus.request_key(e) for e in batch.events] == [first.bet_id, second.bet_id]


async def test_the_follower_calls_a_skipped_seq_and_a_new_epoch_a_gap(
    redis_config: Config,
) -> None:
    cfg = redis_config.redis
    keys = bus.BusKeys.of(cfg.prefix)
    r = client(cfg)
    fanout = CommittedFanout()
    sub = fanout.subscribe(64, "test")
    market_tx, _market_rx = trio.open_memory_channel[MarketState | BreakerChanged](64)
    link = bus.CoreLink(Clock(), 1000)
    gaps: list[str] = []

    def batch(epoch: str, seq: int, n: int) -> None:
        message = CommittedBatch(epoch=epoch, seq=seq, events=(confirmed(place(n)),))
        r.xadd(keys.committed, {bus.FIELD: _enc.encode(message)})

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(bus.run_follower, cfg, keys, fanout, market_tx, link, gaps.append)
            )
            batch("e1", 0, 0)
            batch("e1", 1, 1)
            received = [await sub.receive(), await sub.receive()]
            assert gaps == []
            batch("e1", 3, 2)  # seq 2 was never published: its events are lost to this edge
            received.append(await sub.receive())
            assert gaps == ["events missed"]
            batch("e2", 0, 3)  # a new core
            received.append(await sub.receive())
            assert gaps == ["events missed", "core restarted"]
            nursery.cancel_scope.cancel()
    assert [bus.request_key(e) for e in received] == [place(n).bet_id for n in range(4)]


async def test_an_edge_refuses_at_once_past_the_backlog() -> None:
    send, _receive = trio.open_memory_channel[PlaceBet](16)
    link = bus.CoreLink(Clock(), 1000)
    writer = bus.RemoteWriter(send, link, max_backlog=2)  # type: ignore[arg-type]
    writer.send_nowait(place(0))
    writer.depth = 2  # the stream holds two requests the core has not taken
    with pytest.raises(trio.WouldBlock):
        writer.send_nowait(place(1))
    writer.depth = 0
    link.backlog = 5  # the core's heartbeat says so
    with pytest.raises(trio.WouldBlock):
        writer.send_nowait(place(1))


async def test_a_forwarder_that_cannot_reach_redis_answers_its_requests_locally() -> None:
    dead = RedisConfig(
        url="redis://127.0.0.1:1/0", prefix="nobody", socket_timeout_ms=100,
        connect_timeout_ms=100, request_timeout_ms=300,
    )  # fmt: skip
    keys = bus.BusKeys.of(dead.prefix)
    fanout = CommittedFanout()
    send, receive = trio.open_memory_channel[PlaceBet](16)
    writer = bus.RemoteWriter(send, bus.CoreLink(Clock(), 1000), 100)  # type: ignore[arg-type]
    request = place(7)
    with trio.fail_after(10):
        async with gateway_for(dead) as gateway, trio.open_nursery() as nursery:
            await nursery.start(partial(bus.run_forwarder, gateway, keys, receive, writer, fanout))
            with fanout.expect_bet(request.bet_id) as waiter:
                writer.send_nowait(request)
                answer = await waiter.wait()
            nursery.cancel_scope.cancel()
    assert isinstance(answer, BetRejected)
    assert answer.reason == "dependency_unavailable"
    assert isinstance(answer.bet, Bet) and answer.bet.status == "rejected"


async def test_a_forwarder_refused_by_redis_itself_answers_locally_and_keeps_forwarding(
    redis_config: Config,
) -> None:
    """A key of the wrong type where the requests stream should be (an operator's mistake):
    each request is answered 503 at once, and the forwarder lives on to forward once the key
    is fixed."""
    cfg = redis_config.redis
    keys = bus.BusKeys.of(cfg.prefix)
    r = client(cfg)
    r.set(keys.requests, "not a stream")
    fanout = CommittedFanout()
    send, receive = trio.open_memory_channel[PlaceBet](16)
    writer = bus.RemoteWriter(send, bus.CoreLink(Clock(), 1000), 100)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with gateway_for(cfg) as gateway, trio.open_nursery() as nursery:
            await nursery.start(partial(bus.run_forwarder, gateway, keys, receive, writer, fanout))
            with fanout.expect_bet(place(1).bet_id) as waiter:
                writer.send_nowait(place(1))
                answer = await waiter.wait()
            assert isinstance(answer, BetRejected)
            assert answer.reason == "dependency_unavailable"
            r.delete(keys.requests)
            writer.send_nowait(place(2))
            while r.xlen(keys.requests) != 1:  # noqa: ASYNC110  # polling Redis
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
