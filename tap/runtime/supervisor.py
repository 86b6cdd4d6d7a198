"""The supervisor: the whole process on one page (DESIGN's graph, in code).

```
 feed ─► ingest ─ticks─► breaker ─state─► market · hub
            ├─ticks─► market ─► hub (prices, grid) ─► WS clients
            └─ticks─► resolver ─ticks, settle─┐
 edge ──bets (bounded; full ⇒ 503)──────────► writer (batcher) ─committed─► hub · resolver ·
                                                                   ledger-sync · waiters
 maintenance: archiver (weekly) · integrity (daily) · backups (hourly)
```

Two nested nurseries make the shutdown order explicit: the writer lives in the outer one and
outlives every producer. SIGTERM/SIGINT → stop admission (readiness fails, Hypercorn stops
accepting and finishes in-flight requests within its graceful timeout) → cancel the producers
(ingest, resolver, …) → close the writer's input → the writer drains what was queued, commits,
returns → the committed fan-out closes. A bet answered 202 is therefore committed (confirmed or
rejected) before the process exits, unless it is killed outright — and then it was never
confirmed, so no money moved.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio import serve as hypercorn_serve

from actors import (
    batcher,
    breaker,
    breaker_override,
    hub,
    ingest,
    ledger_sync,
    maintenance,
    market,
    redis_gateway,
    resolver,
)
from actors.breaker import BreakerHandle
from actors.fanout import CommittedFanout, follow
from actors.ingest import ManualFeed, TickOutput
from actors.market import MarketHandle
from tap.config import Config, describe
from tap.edge.app import create_app
from tap.edge.desk import BetDesk
from tap.edge.services import EdgeServices
from tap.edge.ws import MAX_FRAME_BYTES
from tap.errors import ApiError
from tap.hotstate import HotState, HotStateUnavailable, InMemoryHotState
from tap.messages import (
    Bet,
    BetConfirmed,
    BreakerChanged,
    BreakerMode,
    Committed,
    Tick,
    WriterRequest,
)
from tap.pending import PendingBets
from tap.runtime import heap, hypercorn_guard
from tap.runtime.clock import Clock
from tap.runtime.session_secret import load_session_secret
from tap.runtime.stage import Stage
from tap.sessions import SessionBook
from tap.store import archive, connect, read
from tap.store.backup import ServerLock
from tap.store.reader import StoreReader
from tap.store.redis_hot import SCRIPTS, RedisHotState, sentinel_key

_T = TypeVar("_T")
log = logging.getLogger("tap")

Role = Literal["all", "core", "edge"]


@dataclass
class Running:
    """Handles a test (or an embedding program) gets once the server is up."""

    url: str
    port: int
    clock: Clock
    stop: trio.Event
    manual_feed: ManualFeed | None  # the core's and `all`'s feed, when configured "manual"
    services: EdgeServices | None  # an edge's and `all`'s handlers' services; None on the core


@dataclass(frozen=True)
class StartupState:
    """What the ledger says at startup, read before the writer takes its first request."""

    open_bets: list[Any]
    reload_ticks: list[Tick]
    last_tick_before: dict[str, int]


def load_startup_state(db_path: str) -> StartupState:
    conn = connect.open_writer(db_path)  # migrates if needed
    try:
        open_bets = read.open_bets(conn)
        if open_bets:
            first = min(b.t_start for b in open_bets)
            reload_ticks = read.ticks_since(conn, first)
            before = read.last_tick_before(conn, first)
        else:
            reload_ticks, before = [], {}
    finally:
        conn.close()
    return StartupState(open_bets, reload_ticks, before)


class _TimeoutSockets(HypercornConfig):
    """Hypercorn config whose listening sockets carry TCP_USER_TIMEOUT and TCP keepalive.

    Hypercorn's trio server sends with a shielded, untimed `send_all`: a client that stops
    reading would block its connection's sends — and graceful shutdown — forever. Accepted
    sockets inherit TCP_USER_TIMEOUT from the listener, so the kernel fails such a send after
    `send_timeout_ms` of unacknowledged data (DESIGN, known pitfalls).

    Keepalive finds peers that vanished without a word. It replaces Hypercorn's WebSocket pings
    (`websocket_ping_interval`), whose task sleeps out its whole interval after the connection
    has closed: every closed WebSocket would hold its connection task for up to that long, and
    any shutdown within that time would wait for the full graceful timeout.
    """

    send_timeout_ms = 5000
    keepalive_idle_s = 20  # idle this long → probe; gone after `keepalive_probes` unanswered
    keepalive_interval_s = 5
    keepalive_probes = 3
    # SO_REUSEPORT: several edge processes bind the one public port and the kernel spreads new
    # connections over them (`tap serve --edges N`). Hypercorn sets it only for its own
    # multi-worker runner, and it must be set before bind, hence `_create_sockets` below.
    reuse_port = False

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self.send_timeout_ms)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.keepalive_idle_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, self.keepalive_interval_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.keepalive_probes)
        return sockets

    def _create_sockets(self, binds: list[str], type_: int = socket.SOCK_STREAM) -> list[Any]:
        if not self.reuse_port:
            return super()._create_sockets(binds, type_)
        # Hypercorn sets SO_REUSEPORT before bind exactly when it runs several workers.
        workers, self.workers = self.workers, 2
        try:
            return super()._create_sockets(binds, type_)
        finally:
            self.workers = workers


def hypercorn_config(cfg: Config, *, reuse_port: bool = False) -> HypercornConfig:
    """Hypercorn's settings for `cfg.server`. `reuse_port`: several processes listen on one
    port (SO_REUSEPORT; the kernel spreads connections over them: `tap serve --edges N`)."""
    hypercorn_guard.install()  # one connection's protocol error must not end serve()
    hc = _TimeoutSockets()
    hc.reuse_port = reuse_port
    hc.send_timeout_ms = cfg.server.send_timeout_ms
    hc.bind = [f"{cfg.server.host}:{cfg.server.port}"]
    hc.graceful_timeout = cfg.server.graceful_timeout_s
    hc.keep_alive_timeout = cfg.server.keep_alive_timeout_s
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.include_server_header = False
    hc.websocket_ping_interval = None  # TCP keepalive instead (see _TimeoutSockets)
    # API.md: a WS frame is at most 16 KiB, larger closes 1009 — before it is buffered whole
    # (Hypercorn's default is 16 MiB per message).
    hc.websocket_max_message_size = MAX_FRAME_BYTES
    if cfg.server.tls_cert:
        hc.certfile = cfg.server.tls_cert
        hc.keyfile = cfg.server.tls_key
    return hc


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal received, draining", extra={"signal": signum})
            stop.set()
            return


async def _forward(out: trio.MemorySendChannel[_T], value: _T) -> None:
    """Pass a committed event on without yielding while `out` has room, so a committed batch
    crosses this hop in one scheduling round (a yield per event capped a feed at one event per
    round: confirmations fell seconds behind under load, issue 12); wait only when it is full."""
    try:
        out.send_nowait(value)
    except trio.WouldBlock:
        await out.send(value)


async def _confirmed_bets(
    fanout: CommittedFanout,
    out: trio.MemorySendChannel[Bet],
    reload_open: Callable[[], Awaitable[list[Any]]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed the resolver every confirmed bet; after a lag, every open bet from the ledger (the
    resolver's `add` ignores bets it already holds)."""

    async def on_event(event: Committed) -> None:
        if isinstance(event, BetConfirmed):
            await _forward(out, event.bet)

    async def on_lag() -> None:
        for bet in await reload_open():
            await out.send(bet)

    async with out:
        await follow(fanout, "resolver", on_event, on_lag, task_status=task_status)


def session_book(cfg: Config, started_ms: int) -> SessionBook:
    """The session book of a process started at `started_ms`: signed with the deployment's
    session secret (`tap/runtime/session_secret.py`; `ConfigError` when it is too short)."""
    return SessionBook(
        load_session_secret(cfg.server.db_path),
        domain=cfg.auth.domain,
        uri=cfg.auth.uri,
        chain_id=cfg.auth.chain_id,
        challenge_ttl_ms=cfg.auth.challenge_ttl_ms,
        session_ttl_ms=cfg.auth.session_ttl_ms,
        # Login claims in process memory start empty: refuse challenges issued before this
        # start rather than maybe redeem one twice. Claims in Redis outlive the process.
        claims_from_ms=0 if cfg.redis.url else started_ms,
    )


def make_hot_state(cfg: Config) -> HotState:
    marker_ttl = max(3_600_000, max((m.columns_ahead + 2) * m.column_ms for m in cfg.markets))
    return InMemoryHotState(
        cfg.auth.max_skew_ms,
        cfg.limits.rate_per_s,
        cfg.limits.burst,
        marker_ttl_ms=marker_ttl,
    )


async def run_server(
    cfg: Config,
    *,
    clock: Clock | None = None,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    admin_token: str | None = None,
    role: Role = "all",
    reuse_port: bool = False,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `cfg` in `role` until SIGTERM/SIGINT (or `stop`).

    `all` is this module's one-process server. `core` and `edge` are the scale-out roles
    (`tap.runtime.scaleout`): one core and any number of edges, joined by Redis. Every role holds
    the database's server lock (shared: other tap processes may serve the same file) so
    `tap restore` refuses to replace the file underneath a running server."""
    if role != "all":
        from tap.runtime import scaleout  # it builds on this module

        if role == "core":
            await scaleout.serve_core(
                cfg, clock=clock, stop=stop, handle_signals=handle_signals,
                reuse_port=reuse_port, task_status=task_status,
            )  # fmt: skip
        elif role == "edge":
            await scaleout.serve_edge(
                cfg, clock=clock, stop=stop, handle_signals=handle_signals,
                admin_token=admin_token, reuse_port=reuse_port, task_status=task_status,
            )  # fmt: skip
        else:
            raise ValueError(f"role = {role!r}: expected all, core or edge")
        return
    Path(cfg.server.db_path).parent.mkdir(parents=True, exist_ok=True)
    with ServerLock(cfg.server.db_path, shared=True):
        await _serve(cfg, clock, stop, handle_signals, admin_token, reuse_port, task_status)


async def _serve(
    cfg: Config,
    clock: Clock | None,
    stop: trio.Event | None,
    handle_signals: bool,
    admin_token: str | None,
    reuse_port: bool,
    task_status: trio.TaskStatus[Running],
) -> None:
    clock = clock or Clock()
    stop = stop or trio.Event()
    if admin_token is None:
        admin_token = os.environ.get("TAP_ADMIN_TOKEN") or None
    log.info("effective config", extra={"config": describe(cfg)})
    db_path = cfg.server.db_path
    nonce_memory_ms = 2 * cfg.auth.max_skew_ms
    startup = await trio.to_thread.run_sync(load_startup_state, db_path)
    reader = StoreReader(db_path)
    fanout = CommittedFanout()
    pending = PendingBets()

    # The writer's input. Full ⇒ the edge answers 503 overloaded at once (DESIGN rule 4); sized so
    # a few max_batch commits' worth can wait while one is being fsync'd.
    to_writer, writer_input = trio.open_memory_channel[WriterRequest](cfg.batcher.queue_size)
    # One clone per producer (trio#1559): the writer sees the end only when all are closed.
    edge_writer, resolver_writer = to_writer.clone(), to_writer.clone()
    # Redis recoveries ("reconnected" | "data_lost"): one pending is enough, a rebuild covers all.
    recovered_tx, recovered_rx = trio.open_memory_channel[str](1)

    async def read_balances() -> dict[str, tuple[int, int]]:
        return await reader.run(read.all_available_through)

    async def read_one_balance(address: str) -> tuple[int, int]:
        return await reader.run(lambda c: read.available_through(c, address))

    async def recent_nonces() -> list[tuple[str, str, int]]:
        since = clock.now_ms() - nonce_memory_ms
        return await reader.run(lambda c: read.recent_nonces(c, since))

    async def rebuild_hot() -> None:
        """Balances from the ledger, and the ledger's recent nonces, into the hot state.

        Redis uses its rebuild journal (other processes keep admitting meanwhile). In memory,
        the ledger is read and applied with no checkpoint in between — one short read on the
        event loop, only at startup and after a lag — minus the holds of bets accepted but not
        yet committed, so the result is exact rather than too high."""
        if isinstance(hot, RedisHotState):
            await hot.rebuild_from(read_balances)
        else:
            balances = read.read_balances_now(db_path)
            for bet in pending.by_id.values():
                balances[bet.address] = balances.get(bet.address, 0) - bet.amount
            await hot.rebuild(balances)
        await hot.remember_nonces(await recent_nonces(), clock.now_ms())

    async def committed_bets(bet_ids: Sequence[str]) -> dict[str, Bet]:
        ids = list(bet_ids)
        return await reader.run(lambda c: read.bets_by_ids(c, ids))

    async def reload_open() -> list[Any]:
        return await reader.run(read.open_bets)

    try:
        async with trio.open_nursery() as core:
            writer = WriterTask(cfg, clock, writer_input, fanout.publish)
            await core.start(writer.run)
            hot: HotState
            if cfg.redis.url:
                # The gateway outlives the producers: ledger-sync uses it until the writer drains.
                gateway = await core.start(
                    partial(
                        redis_gateway.run,
                        cfg.redis,
                        SCRIPTS,
                        sentinel_key=sentinel_key(cfg.redis.prefix),
                        on_recovered=lambda reason: _offer(recovered_tx, reason),
                    )
                )
                hot = RedisHotState.from_config(gateway, cfg, balance_source=read_one_balance)
            else:
                hot = make_hot_state(cfg)
            try:
                await rebuild_hot()
            except HotStateUnavailable:
                log.warning("hot state unavailable at startup; rebuilt on recovery")
                _offer(recovered_tx, "startup")
            try:
                async with trio.open_nursery() as services:
                    # ── channels between actors (each bounded; size says why) ──
                    # Breaker changes for the hub: rare (at most one per tick), a small buffer.
                    brk_hub_tx, brk_hub_rx = trio.open_memory_channel[BreakerChanged](16)
                    # Operator overrides: a handful at a time at most.
                    override_tx, override_rx = trio.open_memory_channel[BreakerMode](16)
                    # Committed events for the hub, pumped from the fan-out.
                    committed_hub_tx, committed_hub_rx = trio.open_memory_channel[Committed](4096)

                    # ── actors, in dependency order ──
                    await start_bookkeeping(
                        services, cfg, clock, fanout=fanout, hot=hot, pending=pending,
                        rebuild_hot=rebuild_hot, committed_bets=committed_bets,
                        recovered=recovered_rx,
                    )  # fmt: skip
                    the_hub = hub.Hub(cfg.server.ws_queue)
                    await services.start(_pump, fanout, committed_hub_tx, the_hub)
                    await services.start(hub.run, the_hub, committed_hub_rx, brk_hub_rx)
                    pricing = await start_pricing(
                        services, cfg, clock, fanout=fanout, resolver_writer=resolver_writer,
                        startup=startup, reload_open=reload_open, overrides=override_rx,
                        breaker_outputs=[brk_hub_tx], publish=the_hub.publish,
                    )  # fmt: skip
                    brk, mkt, feed = pricing.breaker, pricing.market, pricing.feed
                    if cfg.redis.url:
                        # Operator overrides arrive over pub/sub so every process obeys one command.
                        await services.start(breaker_override.run, cfg.redis, override_tx)

                    # ── the edge ──
                    desk = BetDesk(
                        cfg,
                        clock.now_ms,
                        hot,
                        mkt,
                        lambda s: brk.state() == "open",
                        edge_writer,
                        pending,
                    )
                    svc = EdgeServices(
                        cfg=cfg,
                        clock=clock,
                        sessions=session_book(cfg, clock.now_ms()),
                        desk=desk,
                        pending=pending,
                        hot=hot,
                        writer=edge_writer,
                        fanout=fanout,
                        reader=reader,
                        market=mkt,
                        breaker_state=lambda s: brk.state(),
                        breaker_reason=lambda s: brk.reason(),
                        override_breaker_fn=(
                            hot.publish_override
                            if isinstance(hot, RedisHotState)
                            else override_tx.send
                        ),
                        hub=the_hub,
                        stopping=stop,
                        admin_token=admin_token,
                        redis_configured=bool(cfg.redis.url),
                        archive_fn=partial(_archive_now, cfg, clock),
                        integrity_fn=partial(
                            trio.to_thread.run_sync, maintenance.integrity_violations, cfg
                        ),
                        writer_depth=writer.depth,
                        writer_alive=writer.alive,
                    )
                    app = create_app(svc)
                    hc = hypercorn_config(cfg, reuse_port=reuse_port)
                    if handle_signals:
                        services.start_soon(_watch_signals, stop)
                    serving = Stage("http")
                    binds = await services.start(
                        partial(serving.run, hypercorn_serve, app, hc, shutdown_trigger=stop.wait)
                    )
                    url = binds[0]
                    port = int(url.rsplit(":", 1)[1])
                    log.info("serving", extra={"url": url})
                    # Everything built so far lives as long as the process: frozen out of the
                    # collector's reach, and its thresholds raised (tap/runtime/heap.py).
                    heap.settle()
                    task_status.started(Running(url, port, clock, stop, feed.manual, svc))
                    # Returns once `stop` fired and Hypercorn drained in-flight requests within
                    # its graceful timeout; then every other producer is stopped.
                    await serving.done.wait()
                    await pricing.drain(cfg.server.graceful_timeout_s)
                    services.cancel_scope.cancel()
            finally:
                # Every producer is gone: close the writer's input so it drains and returns.
                for sender in (to_writer, edge_writer, resolver_writer):
                    sender.close()
            await writer.done.wait()
            core.cancel_scope.cancel()  # the Redis gateway, if any
        writer.raise_failure()
    finally:
        fanout.close()
        reader.close()
        await hot.aclose()


@dataclass
class Pricing:
    """The core's feed side once started: the handles the edge (or the bus) reads, and the
    stages stopped in order at shutdown (`drain`)."""

    breaker: BreakerHandle
    market: MarketHandle
    feed: Any  # ingest's handle (`.manual` when the feed is manual)
    ingesting: Stage
    resolving: Stage
    ticks_in: tuple[trio.MemorySendChannel[Tick], ...]

    async def drain(self, within_s: float) -> None:
        """Stop the feed, then end the tick channels: the resolver hands the writer every tick
        and outcome it has (a decided win must not come back as a void because its ticks were
        dropped), bounded in case the writer is stuck."""
        await self.ingesting.stop()
        for ticks_in in self.ticks_in:
            ticks_in.close()
        await self.resolving.finished(within_s)


async def start_pricing(
    services: trio.Nursery,
    cfg: Config,
    clock: Clock,
    *,
    fanout: CommittedFanout,
    resolver_writer: trio.MemorySendChannel[WriterRequest],
    startup: StartupState,
    reload_open: Callable[[], Awaitable[list[Any]]],
    overrides: trio.MemoryReceiveChannel[BreakerMode],
    breaker_outputs: Sequence[trio.MemorySendChannel[BreakerChanged]],
    publish: market.Publish,
    states: market.StateSink | None = None,
) -> Pricing:
    """Start the feed side of the core in `services`, in dependency order: breaker, market,
    the resolver (fed the writer's confirmations) and ingest last. `breaker_outputs` hear every
    breaker change besides the market (the hub, or the bus to the edges); `publish` takes the
    market's frames (the hub's fan-out, or nothing on a core); `states`, every priced tick."""
    # ── channels between actors (each bounded; size says why) ──
    # Ticks the breaker must see, in order (lossless): a few seconds of a busy feed.
    tick_breaker_tx, tick_breaker_rx = trio.open_memory_channel[Tick](1024)
    # Ticks for resolution and the tick log (lossless): a column's worth of a busy feed, so
    # closing a column never makes ingest wait.
    tick_resolver_tx, tick_resolver_rx = trio.open_memory_channel[Tick](4096)
    # Ticks for prices and the grid (lossy): only the newest matters.
    tick_market_tx, tick_market_rx = trio.open_memory_channel[Tick](64)
    # Breaker changes are rare (at most one per tick): a small buffer.
    brk_market_tx, brk_market_rx = trio.open_memory_channel[BreakerChanged](16)
    # Confirmed bets for the resolver: its intake is O(1) per bet, so a burst of one commit
    # batch fits.
    bets_tx, bets_rx = trio.open_memory_channel[Bet](4096)

    brk = await services.start(
        partial(
            breaker.run, cfg.breaker, clock, tick_breaker_rx, [brk_market_tx, *breaker_outputs],
            overrides, symbol=cfg.feed.symbol,
            # The in-process simulator's ts is our schedule, not a market's clock.
            judge_tick_age=cfg.feed.source != "sim",
        )
    )  # fmt: skip
    mkt = await services.start(
        partial(
            market.run,
            cfg,
            clock,
            tick_market_rx,
            brk_market_rx,
            publish,
            states=states,
            offload=True,  # grids priced in a worker thread, off the event loop
        )
    )
    await services.start(_confirmed_bets, fanout, bets_tx, reload_open)
    resolving = Stage("resolver")
    await services.start(
        partial(
            resolving.run, resolver.run, cfg, clock, tick_resolver_rx, bets_rx, resolver_writer,
            startup.open_bets, startup.last_tick_before or None, startup.reload_ticks,
        )
    )  # fmt: skip
    # Ingest is a stage of its own: at shutdown it stops first, so the resolver can finish with
    # every tick it was given (`Pricing.drain`).
    ingesting = Stage("ingest")
    outputs = [
        TickOutput("breaker", tick_breaker_tx, lossless=True),
        TickOutput("resolver", tick_resolver_tx, lossless=True),
        TickOutput("market", tick_market_tx, lossless=False),
    ]
    feed = await services.start(partial(ingesting.run, ingest.run, cfg, clock, outputs))
    return Pricing(
        brk, mkt, feed, ingesting, resolving, (tick_breaker_tx, tick_resolver_tx, tick_market_tx)
    )


async def start_bookkeeping(
    services: trio.Nursery,
    cfg: Config,
    clock: Clock,
    *,
    fanout: CommittedFanout,
    hot: HotState,
    pending: PendingBets,
    rebuild_hot: Callable[[], Awaitable[None]],
    committed_bets: ledger_sync.CommittedBets,
    recovered: trio.MemoryReceiveChannel[str],
) -> None:
    """Start the core's ledger side in `services`: ledger-sync (the hot state follows every
    commit), the rebuild after a Redis recovery, and maintenance (archiver, integrity, backups:
    own connections, read-mostly; the writer has migrated already)."""
    await services.start(
        partial(
            ledger_sync.run, fanout, hot, pending, rebuild_hot,
            committed_bets=committed_bets, now_ms=clock.now_ms,
        )
    )  # fmt: skip
    services.start_soon(_rebuild_on_recovery, recovered, rebuild_hot)
    await services.start(maintenance.run_archiver, cfg, clock)
    await services.start(maintenance.run_integrity, cfg, clock)
    await services.start(maintenance.run_backups, cfg, clock)


class WriterTask:
    """The single writer (`actors.batcher`) as a task of a role's outermost nursery.

    A failure while the database opens fails startup. A fatal database error later
    (`write.is_fatal`; the batcher logged it critical) closes the writer's input: writes then fail
    fast (503) instead of queueing answers that never come, readiness fails (`done` is set), and
    reads, prices and the grid stay up for the operator until the process is stopped; it then
    exits with this error (`raise_failure`)."""

    def __init__(
        self,
        cfg: Config,
        clock: Clock,
        requests: trio.MemoryReceiveChannel[WriterRequest],
        publish: Callable[[Sequence[Any]], None],
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.requests = requests
        self.publish = publish
        self.done = trio.Event()
        self.failure: Exception | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer until its input closes (then it drains, commits and returns); see
        the class text for what a failure before and after startup means."""
        started = _Started(task_status)
        try:
            await batcher.run(
                self.cfg.batcher,
                self.clock,
                self.requests,
                self.publish,
                self.cfg.server.db_path,
                cell_caps={m.symbol: m.max_cell_liability for m in self.cfg.markets},
                # a bet or payment answered only after its commit closes its batch early
                awaited=batcher.answered_after_commit,
                task_status=started,  # type: ignore[arg-type]
            )
        except Exception as e:
            if not started.done:
                raise  # the database did not even open: startup fails
            self.failure = e
            self.requests.close()
        finally:
            self.done.set()

    def alive(self) -> bool:
        return not self.done.is_set()

    def depth(self) -> tuple[int, int]:
        return self.requests.statistics().current_buffer_used, self.cfg.batcher.queue_size

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise RuntimeError("the ledger writer stopped on a fatal error") from self.failure


class _Started:
    """A `task_status` that remembers whether `started()` was called (the writer's, so that a
    failure after startup is told apart from one during it)."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self.inner.started(value)


async def _archive_now(cfg: Config, clock: Clock) -> dict[str, Any]:
    """`POST /admin/archive`: one run now, in a worker thread with its own connection."""
    try:
        report: dict[str, Any] = await trio.to_thread.run_sync(
            archive.run_archive, cfg, clock.now_ms()
        )
    except archive.ArchiverBusy:
        raise ApiError("archive_running", "an archive run is already in progress") from None
    return report


def _offer(channel: trio.MemorySendChannel[str], reason: str) -> None:
    """Non-blocking hand-off: a full channel already holds a pending rebuild."""
    try:
        channel.send_nowait(reason)
    except trio.WouldBlock:
        pass


async def _rebuild_on_recovery(
    recovered: trio.MemoryReceiveChannel[str], rebuild: Callable[[], Awaitable[None]]
) -> None:
    """After Redis comes back (or lost its data), rebuild balances and nonces from the ledger;
    retry every second while it is still unreachable."""
    async for reason in recovered:
        while True:
            try:
                await rebuild()
                log.info("hot state rebuilt from the ledger", extra={"reason": reason})
                break
            except HotStateUnavailable:
                await trio.sleep(1)


async def _pump(
    fanout: CommittedFanout,
    out: trio.MemorySendChannel[Committed],
    the_hub: hub.Hub,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Committed events → the hub. If this feed ever lags, account frames were lost: every WS
    client is closed with 1013 (API.md: resync over HTTP) rather than silently missing them."""

    async def on_lag() -> None:
        the_hub.close_all(1013, "account messages were lost; resync over HTTP")

    async with out:
        await follow(fanout, "hub", partial(_forward, out), on_lag, task_status=task_status)
