"""The two scale-out roles on one page each: the core, and an edge (DESIGN "Scale-out").

```
           ┌────────────────────────────── core ───────────────────────────────┐
 feed ─► ingest ─► breaker · market · resolver ─► writer ─committed─► ledger-sync (hot state)
                                   │                 ▲         └─► relay ─► bus:committed
                                   └─► market relay ─┼─► bus:market (ticks+σ, breaker, heartbeat)
                     bus:requests ─► intake ─────────┘
           └───────────────────────────────────────────────────────────────────┘
           ┌────────────────────────────── edge (×N) ──────────────────────────┐
 HTTP/WS ─► desk (admission on Redis) ─► forwarder ─► bus:requests
 bus:committed ─► follower ─► fan-out ─► waiters (202 after commit) · hub · pending map
 bus:market    ─► follower ─► market mirror (quotes, grids) · core watch (silent ⇒ breaker open)
           └───────────────────────────────────────────────────────────────────┘
```

`tap serve --role all` (the supervisor module) runs both halves in one process with a memory
channel between them; these two run them in separate processes joined by Redis Streams
(`actors/bus.py`). The core alone writes the ledger, resolves bets, keeps the hot state in line
with the ledger and runs maintenance; an edge reads the same SQLite file read-only, admits on
the shared Redis hot state, and never writes the ledger.

Shutdown. Core: stop ingest, let the resolver hand over what it has, stop the intake (requests
not read stay in the stream for the next start), drain the writer, publish its last verdicts,
then drop Redis. Edge: Hypercorn drains in-flight requests, then the forwarder hands the last
queued requests to the stream, then Redis goes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.trio import serve as hypercorn_serve

from actors import (
    breaker_override,
    bus,
    hub,
    ledger_sync,
    maintenance,
    market,
    redis_gateway,
)
from actors.fanout import FOLLOW_CAPACITY, CommittedFanout
from tap.config import Config, ConfigError, describe
from tap.edge.app import create_app
from tap.edge.desk import BetDesk
from tap.edge.services import EdgeServices
from tap.hotstate import HotStateUnavailable
from tap.messages import (
    Bet,
    BreakerChanged,
    BreakerMode,
    BusRequest,
    Committed,
    MarketState,
    PlaceBet,
    WriterRequest,
)
from tap.pending import PendingBets
from tap.runtime import heap
from tap.runtime.clock import Clock
from tap.runtime.ops_app import OpsApp
from tap.runtime.stage import Stage
from tap.runtime.supervisor import (
    Running,
    WriterTask,
    _archive_now,
    _offer,
    _pump,
    _watch_signals,
    hypercorn_config,
    load_startup_state,
    session_book,
    start_bookkeeping,
    start_pricing,
)
from tap.store import connect, read
from tap.store.backup import ServerLock
from tap.store.reader import StoreReader
from tap.store.redis_hot import SCRIPTS, RedisHotState, sentinel_key

log = logging.getLogger("tap")


def _require_redis(cfg: Config, role: str) -> None:
    if not cfg.redis.url:
        raise ConfigError(f"--role {role} needs redis.url: the core and its edges meet in Redis")


async def serve_core(
    cfg: Config,
    *,
    clock: Clock | None = None,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The core until SIGTERM/SIGINT (or `stop`). It serves only the ops endpoints, on
    `server.port`."""
    _require_redis(cfg, "core")
    clock = clock or Clock()
    stop = stop or trio.Event()
    log.info("effective config", extra={"config": describe(cfg), "role": "core"})
    db_path = cfg.server.db_path
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    with ServerLock(db_path, shared=True):
        startup = await trio.to_thread.run_sync(load_startup_state, db_path)
        reader = StoreReader(db_path)
        fanout = CommittedFanout()
        # Bets the intake handed to the writer and not yet decided: ledger-sync tells a replay
        # the writer answered with an earlier bet by them (its hold is given back).
        pending = PendingBets()
        inflight = bus.Inflight()
        keys = bus.BusKeys.of(cfg.redis.prefix)
        epoch = bus.new_epoch()

        # The writer's input, shared by the intake and the resolver; the intake waits when it is
        # full (the requests stream is the buffer, and its length the edges' 503).
        to_writer, writer_input = trio.open_memory_channel[WriterRequest](cfg.batcher.queue_size)
        intake_writer, resolver_writer = to_writer.clone(), to_writer.clone()
        # Redis recoveries ("reconnected" | "data_lost"): one pending is enough.
        recovered_tx, recovered_rx = trio.open_memory_channel[str](1)

        def on_request(request: BusRequest) -> None:
            if isinstance(request, PlaceBet):
                pending.add(request.as_bet())

        try:
            async with trio.open_nursery() as outer:
                writer = WriterTask(cfg, clock, writer_input, fanout.publish)
                await outer.start(writer.run)
                gateway = await outer.start(
                    partial(
                        redis_gateway.run,
                        cfg.redis,
                        SCRIPTS,
                        sentinel_key=sentinel_key(cfg.redis.prefix),
                        on_recovered=lambda reason: _offer(recovered_tx, reason),
                    )
                )
                hot = RedisHotState.from_config(
                    gateway,
                    cfg,
                    balance_source=lambda a: reader.run(lambda c: read.available_through(c, a)),
                )

                async def ledger_less_waiting() -> dict[str, tuple[int, int]]:
                    """The ledger's balances, less what waits in the requests stream (its holds
                    are in Redis and not yet in the ledger: `bus.waiting_holds`)."""
                    balances = await reader.run(read.all_available_through)
                    for address, held in (await bus.waiting_holds(gateway, keys)).items():
                        available, through = balances.get(address, (0, 0))
                        balances[address] = (available - held, through)
                    return balances

                async def rebuild_hot() -> None:
                    await hot.rebuild_from(ledger_less_waiting)
                    since = clock.now_ms() - 2 * cfg.auth.max_skew_ms
                    nonces = await reader.run(lambda c: read.recent_nonces(c, since))
                    await hot.remember_nonces(nonces, clock.now_ms())

                async def committed_bets(bet_ids: Sequence[str]) -> dict[str, Bet]:
                    ids = list(bet_ids)
                    return await reader.run(lambda c: read.bets_by_ids(c, ids))

                async def reload_open() -> list[Any]:
                    return await reader.run(read.open_bets)

                try:
                    await rebuild_hot()
                except HotStateUnavailable:
                    log.warning("hot state unavailable at startup; rebuilt on recovery")
                    _offer(recovered_tx, "startup")
                # The relay outlives the producers: it publishes the writer's last verdicts.
                relaying = Stage("relay")
                await outer.start(
                    partial(
                        relaying.run, bus.run_relay, cfg.bus, gateway, keys, fanout, inflight,
                        epoch, capacity=FOLLOW_CAPACITY,
                    )
                )  # fmt: skip
                try:
                    async with trio.open_nursery() as services:
                        # ── channels between actors (each bounded; size says why) ──
                        # What the edges' mirrors need (lossy: the next tick or heartbeat
                        # replaces a dropped one): a few seconds of ticks.
                        to_edges_tx, to_edges_rx = trio.open_memory_channel[
                            MarketState | BreakerChanged
                        ](256)
                        # Operator overrides: a handful at a time at most.
                        override_tx, override_rx = trio.open_memory_channel[BreakerMode](16)

                        # ── actors, in dependency order ──
                        await start_bookkeeping(
                            services, cfg, clock, fanout=fanout, hot=hot, pending=pending,
                            rebuild_hot=rebuild_hot, committed_bets=committed_bets,
                            recovered=recovered_rx,
                        )  # fmt: skip
                        pricing = await start_pricing(
                            services, cfg, clock, fanout=fanout, resolver_writer=resolver_writer,
                            startup=startup, reload_open=reload_open, overrides=override_rx,
                            breaker_outputs=[to_edges_tx.clone()],  # type: ignore[list-item]
                            publish=lambda channel, frame: None,  # no WS clients on the core
                            states=lambda state: bus.offer(to_edges_tx, state),
                        )  # fmt: skip
                        brk, feed = pricing.breaker, pricing.feed
                        await services.start(breaker_override.run, cfg.redis, override_tx)
                        await services.start(
                            partial(
                                bus.run_market_relay, gateway, keys, clock, epoch, to_edges_rx,
                                lambda: (brk.state(), brk.reason()),
                            )
                        )  # fmt: skip
                        intake = Stage("intake")
                        await services.start(
                            partial(
                                intake.run, bus.run_intake, cfg.redis, gateway, keys, intake_writer,
                                inflight, on_request,
                            )
                        )  # fmt: skip

                        # ── the operations endpoints ──
                        async def readiness() -> tuple[bool, dict[str, Any]]:
                            redis_ok = await gateway.ping()
                            ok = writer.alive() and redis_ok and not stop.is_set()
                            return ok, {
                                "database": "pass" if writer.alive() else "fail",
                                "redis": "pass" if redis_ok else "fail",
                                "accepting": "fail" if stop.is_set() else "pass",
                            }

                        async def health() -> tuple[str, dict[str, Any]]:
                            ready, checks = await readiness()
                            depth, capacity = writer.depth()
                            state = brk.state()
                            detail: dict[str, Any] = {k: {"status": v} for k, v in checks.items()}
                            detail["circuit_breaker"] = {
                                "status": "pass" if state == "closed" else "warn",
                                "state": state,
                                "reason": brk.reason(),
                            }
                            detail["batcher"] = {
                                "status": "warn" if depth * 2 > capacity else "pass",
                                "queue_depth": depth,
                                "capacity": capacity,
                            }
                            if not writer.alive():
                                return "fail", detail
                            warn = not ready or any(c["status"] != "pass" for c in detail.values())
                            return ("warn" if warn else "pass"), detail

                        hc = hypercorn_config(cfg, reuse_port=reuse_port)
                        if handle_signals:
                            services.start_soon(_watch_signals, stop)
                        binds = await services.start(
                            partial(
                                hypercorn_serve,
                                OpsApp(readiness, health, clock.now_ms),
                                hc,
                                shutdown_trigger=stop.wait,
                            )
                        )
                        url = binds[0]
                        log.info("core serving", extra={"url": url, "epoch": epoch})
                        heap.settle()  # freeze and raise the thresholds: tap/runtime/heap.py
                        task_status.started(
                            Running(url, int(url.rsplit(":", 1)[1]), clock, stop, feed.manual, None)
                        )
                        await stop.wait()
                        # Stop reading requests first (unread ones wait in the stream for the
                        # next start), then the feed; the resolver hands over what it has.
                        await intake.stop()
                        await pricing.drain(cfg.server.graceful_timeout_s)
                        services.cancel_scope.cancel()
                finally:
                    for sender in (to_writer, intake_writer, resolver_writer):
                        sender.close()
                await writer.done.wait()
                fanout.close()  # the relay publishes what is left, then returns
                await relaying.finished(cfg.server.graceful_timeout_s)
                outer.cancel_scope.cancel()  # the Redis gateway
            writer.raise_failure()
        finally:
            fanout.close()
            reader.close()


async def serve_edge(
    cfg: Config,
    *,
    clock: Clock | None = None,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    admin_token: str | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One edge until SIGTERM/SIGINT (or `stop`): the whole API on `server.port`, with the
    core's writer, market and breaker reached over the bus."""
    _require_redis(cfg, "edge")
    clock = clock or Clock()
    stop = stop or trio.Event()
    if admin_token is None:
        admin_token = os.environ.get("TAP_ADMIN_TOKEN") or None
    log.info("effective config", extra={"config": describe(cfg), "role": "edge"})
    db_path = cfg.server.db_path
    await trio.to_thread.run_sync(connect.wait_for_schema, db_path)
    reader = StoreReader(db_path)
    # This edge's view of the core's commits, fed by the follower: waiters, hub, pending map.
    fanout = CommittedFanout()
    pending = PendingBets()
    keys = bus.BusKeys.of(cfg.redis.prefix)
    link = bus.CoreLink(clock, cfg.bus.core_silence_ms)
    # Requests on their way to the stream: the desk's non-blocking hand-off; full ⇒ 503.
    to_core_tx, to_core_rx = trio.open_memory_channel[BusRequest](cfg.batcher.queue_size)
    writer = bus.RemoteWriter(to_core_tx, link, cfg.bus.max_backlog)

    async def committed_bets(bet_ids: Sequence[str]) -> dict[str, Bet]:
        ids = list(bet_ids)
        return await reader.run(lambda c: read.bets_by_ids(c, ids))

    async def no_rebuild() -> None:
        """An edge never rebuilds the hot state: the core keeps it in line with the ledger."""

    try:
        async with trio.open_nursery() as outer:
            gateway = await outer.start(
                partial(redis_gateway.run, cfg.redis, SCRIPTS)  # the core probes for data loss
            )
            hot = RedisHotState.from_config(
                gateway,
                cfg,
                balance_source=lambda a: reader.run(lambda c: read.available_through(c, a)),
            )
            forwarding = Stage("forwarder")
            await outer.start(
                partial(
                    forwarding.run, bus.run_forwarder, gateway, keys, to_core_rx, writer, fanout
                )
            )
            try:
                async with trio.open_nursery() as services:
                    # ── channels between actors (each bounded; size says why) ──
                    # The core's ticks and breaker changes for the mirror (lossy: newest wins).
                    market_tx, market_rx = trio.open_memory_channel[MarketState | BreakerChanged](
                        256
                    )
                    # Breaker changes for the hub (rare).
                    brk_hub_tx, brk_hub_rx = trio.open_memory_channel[BreakerChanged](16)
                    # Committed events for the hub, pumped from the fan-out.
                    committed_hub_tx, committed_hub_rx = trio.open_memory_channel[Committed](4096)

                    # ── actors, in dependency order ──
                    the_hub = hub.Hub(cfg.server.ws_queue)

                    def on_gap(why: str) -> None:
                        log.error("committed events from the core were missed (%s)", why)
                        the_hub.close_all(1013, "account messages were lost; resync over HTTP")

                    await services.start(
                        partial(
                            ledger_sync.run, fanout, None, pending, no_rebuild,
                            committed_bets=committed_bets, now_ms=clock.now_ms,
                        )
                    )  # fmt: skip
                    await services.start(_pump, fanout, committed_hub_tx, the_hub)
                    await services.start(hub.run, the_hub, committed_hub_rx, brk_hub_rx)
                    mkt = await services.start(
                        partial(
                            market.run_mirror, cfg, clock, market_rx, the_hub.publish,
                            offload=True,  # grids priced in a worker thread
                        )
                    )  # fmt: skip
                    await services.start(
                        partial(
                            bus.run_follower, cfg.redis, keys, fanout, market_tx.clone(), link,
                            on_gap,
                        )
                    )  # fmt: skip
                    await services.start(bus.run_core_watch, link, [market_tx, brk_hub_tx])

                    # ── the edge ──
                    desk = BetDesk(
                        cfg, clock.now_ms, hot, mkt, lambda s: link.state() == "open", writer,
                        pending,
                    )  # fmt: skip
                    svc = EdgeServices(
                        cfg=cfg,
                        clock=clock,
                        sessions=session_book(cfg, clock.now_ms()),
                        desk=desk,
                        pending=pending,
                        hot=hot,
                        writer=writer,
                        fanout=fanout,
                        reader=reader,
                        market=mkt,
                        breaker_state=lambda s: link.state(),
                        breaker_reason=lambda s: link.why(),
                        override_breaker_fn=hot.publish_override,
                        hub=the_hub,
                        stopping=stop,
                        admin_token=admin_token,
                        redis_configured=True,
                        archive_fn=partial(_archive_now, cfg, clock),
                        integrity_fn=partial(
                            trio.to_thread.run_sync, maintenance.integrity_violations, cfg
                        ),
                        writer_depth=writer.statistics,
                        core_alive=link.alive,
                    )
                    if handle_signals:
                        services.start_soon(_watch_signals, stop)
                    serving = Stage("http")
                    binds = await services.start(
                        partial(
                            serving.run, hypercorn_serve, create_app(svc),
                            hypercorn_config(cfg, reuse_port=reuse_port),
                            shutdown_trigger=stop.wait,
                        )
                    )  # fmt: skip
                    url = binds[0]
                    log.info("edge serving", extra={"url": url})
                    heap.settle()  # freeze and raise the thresholds: tap/runtime/heap.py
                    task_status.started(
                        Running(url, int(url.rsplit(":", 1)[1]), clock, stop, None, svc)
                    )
                    await serving.done.wait()
                    services.cancel_scope.cancel()
            finally:
                writer.close()  # the forwarder hands what is queued to the stream, then returns
            await forwarding.finished(cfg.server.graceful_timeout_s)
            outer.cancel_scope.cancel()
    finally:
        fanout.close()
        reader.close()
