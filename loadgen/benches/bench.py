"""`python -m loadgen bench`: tap's capacity against same-run baselines, on servers started here.

It decides the benchmark protocol. For each target — (1) a bare ASGI 202 endpoint on
Hypercorn-trio, (2) a minimal Quart-trio route, (3) the same-shape ceiling (a Quart-trio route
that answers 202 and pushes one frame to the client's WebSocket), (4) tap's full HTTP bet path
(unique signed bets, real commits, every 202 followed to its `bet_confirmed`), (5) a Quart-trio
WebSocket echo, (6) tap's WebSocket `place_bet` with `ack: "commit"` — it first reads the
server's CPU per request at one fixed rate (`Plan.cpu_rate`), then searches for the highest
open-loop arrival rate that is *sustained*: over the measured window p99 ≤ 100 ms, no 5xx, no
transport failure, no refusal other than the odd `cell_not_placeable` race (≤ 1 %), the generator
sent every arrival, and for targets that push a confirmation its 202 → confirmation p99 ≤ 100 ms
too; the top rate counts only once a longer repeat of it passed as well. Then it runs tap at 70 %
of its own HTTP capacity. `report.json` carries every probe, the CPU of generator, signer and
server during it, `ratios` (capacities) and `cpu_ratios` (server CPU per request at the fixed
rate); `--runs N` repeats everything and adds the spread.

Same run, same machine, same generator: the ratios are what the bench is for; absolute numbers
move with the hardware. When the generator itself was saturated at a target's limit
(≥ 90 % CPU or a late dispatcher) the target is flagged `limited_by: "generator"`, since its
figure is then a floor, not a capacity.

Sub-benches: `naive` (tap vs the naive one-commit-per-request peer, same scenario), `fanout` (N
WebSocket clients on `prices`; tick → client latency), `client` (CPU per request of the hand-made
HTTP/1.1 client vs httpx), and `batcher` / `resolver`, which call
`loadgen.benches.bench_batcher.run` and
`loadgen.benches.bench_resolver.run` when those modules are present.
"""

from __future__ import annotations

import importlib
import inspect
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec
import trio
import trio.lowlevel
import trio_websocket

from loadgen.generator.capacity import CapacitySearch
from loadgen.generator.engine import Dispatcher, SlotPool, freeze_heap
from loadgen.generator.h1 import HttpConnection, HttpError
from loadgen.generator.histogram import Histogram
from loadgen.generator.market import bet_decoder, frame_decoder
from loadgen.generator.recorder import BET_HTTP, BET_WS, TRANSPORT, ConfirmationTracker, Recorder
from loadgen.generator.runner import CPU_WARN_PCT, LAG_WARN_MS, Monitor
from loadgen.generator.scenario import ClientSpec, Stage
from loadgen.generator.schedule import Schedule
from loadgen.generator.signer import Signer
from loadgen.generator.vu import Crowd, Target
from loadgen.peers.targets import (
    RunningServer,
    ServerFailed,
    start_bench_server,
    start_naive_server,
    start_tap_server,
    tap_unavailable,
)

P99_LIMIT_MS = 100.0
WAIT_LIMIT_PCT = 10.0  # % of a probe spent runnable but without a core: the machine was busy
RACE_CODES = frozenset({"cell_not_placeable"})  # a cell rolling into the lockout mid-flight
RACE_SHARE = 0.01
ECHO_ROUTE = "WS echo"

# tap as the bench runs it: the per-address rate limit lifted (the bench measures the bet path,
# not the limiter's refusals; the limiter still runs on every bet), mock deposits on, and the
# breaker's startup hysteresis cut to 1 s (it opens at startup and would otherwise keep /readyz
# at 503 for its default 30 s before every bench).
# tap's keep-alive timeout as the benches run it (its default), and how long the generator
# reuses an idle connection against it (Hypercorn's own default is 5 s: the baselines get 4 s).
TAP_KEEP_ALIVE_S = 30.0
BENCH_COLUMNS = 2  # the bench's users tap the nearest two placeable columns (see `bench_spec`)
TAP_CLIENT_KEEP_ALIVE_S = 25.0
TAP_BENCH_OVERRIDES: dict[str, Any] = {
    "limits": {"rate_per_s": 100_000.0, "burst": 100_000},
    "breaker": {"hysteresis_ms": 1000},
    "payments": {"mock_deposits": True},
    "server": {"log_level": "warning", "keep_alive_timeout_s": TAP_KEEP_ALIVE_S},
}


class Plan(msgspec.Struct, frozen=True):
    warmup_s: float
    measure_s: float
    max_probes: int
    max_retries: int  # probes repeated because the machine, not the target, was busy
    start_rate: float
    settle_s: float
    drain_s: float  # at most this long for the server to answer every bet before a probe
    at_70_s: float
    vus: int
    timeout_s: float
    fanout_clients: int
    fanout_s: float
    confirm_s: float  # the measured window of a repeated (confirming) top probe
    # Every target is also probed at this one rate, whatever its capacity: server CPU per
    # request compared at equal load (per-request CPU falls as batches grow with the rate).
    cpu_rate: float


QUICK = Plan(
    warmup_s=0.5,
    measure_s=2.0,
    max_probes=6,
    max_retries=1,
    start_rate=400.0,
    settle_s=0.3,
    drain_s=10.0,
    at_70_s=8.0,
    vus=500,
    timeout_s=2.0,
    fanout_clients=200,
    fanout_s=8.0,
    confirm_s=3.0,
    cpu_rate=200.0,
)
FULL = Plan(
    warmup_s=1.0,
    measure_s=5.0,
    max_probes=10,
    max_retries=4,
    start_rate=300.0,
    settle_s=1.0,
    drain_s=30.0,
    at_70_s=30.0,
    vus=1000,
    timeout_s=5.0,
    fanout_clients=1000,
    fanout_s=30.0,
    confirm_s=10.0,
    cpu_rate=200.0,
)


class Workload(Protocol):
    """A kind of request and the slots (clients) that send it."""

    route: str
    recorder: Recorder
    # A probe of this workload warms up at least `steady_s` and measures at least `window_s`
    # (0: the plan's): a tap bet brings its settlement one column's end later, so a probe is
    # in its steady state (as many bets settled per second as placed) only after the longest
    # such wait, and a measured window of one column holds exactly one column's end.
    steady_s: float
    window_s: float

    @property
    def tracker(self) -> ConfirmationTracker | None:
        """Follows each 202 to its pushed confirmation (None: the target pushes none)."""

    @property
    def slots(self) -> list[Any]: ...

    async def fire(self, slot: Any, due: float) -> None: ...

    async def before_probe(self, rate: float) -> None: ...

    async def settle(self, within: float) -> None: ...


# ── the workloads ─────────────────────────────────────────────────────────────────────────────


async def warm_all(conns: list[HttpConnection], concurrency: int = 32) -> None:
    """(Re)open idle connections before a probe, a few at a time (see `HttpConnection.warm`)."""
    limiter = trio.CapacityLimiter(concurrency)

    async def one(conn: HttpConnection) -> None:
        async with limiter:
            await conn.warm()

    async with trio.open_nursery() as n:
        for c in conns:
            n.start_soon(one, c)


def bet_shaped_body() -> bytes:
    """A request body the size and shape of a real bet, for the baselines."""
    return msgspec.json.encode(
        {
            "cell_id": "BTC-USD:346458012:10012",
            "amount": 1_000_000,
            "nonce": "k3j9x0a2mq7w-1f-3a",
            "timestamp": 1_732_290_000_000,
            "chain_id": 31337,
            "min_multiplier_bps": 0,
            "signature": "ab" * 64,
        }
    )


class HttpBaseline:
    """`POST /api/bets` with a bet-shaped body, over one keep-alive connection per slot."""

    route = BET_HTTP
    tracker: ConfirmationTracker | None = None
    steady_s = 0.0
    window_s = 0.0

    def __init__(self, target: Target, connections: int, timeout: float) -> None:
        self.recorder = Recorder()
        self.timeout = timeout
        self._slots = [target.connection() for _ in range(connections)]
        headers = b"Content-Type: application/json\r\nAuthorization: Bearer " + b"x" * 32 + b"\r\n"
        self.head = self._slots[0].head("POST", "/api/bets", headers)
        self.body = bet_shaped_body()

    @property
    def slots(self) -> list[Any]:
        return self._slots

    async def before_probe(self, rate: float) -> None:
        await warm_all(self._slots)

    async def settle(self, within: float) -> None:
        return None

    async def fire(self, conn: HttpConnection, due: float) -> None:
        try:
            with trio.fail_after(self.timeout):
                resp = await conn.send(self.head, self.body)
        except trio.TooSlowError:
            self.recorder.record(self.route, due, trio.current_time(), TRANSPORT, "timeout")
            return
        except (HttpError, OSError, trio.BrokenResourceError) as e:
            self.recorder.record(self.route, due, trio.current_time(), TRANSPORT, type(e).__name__)
            return
        self.recorder.record(self.route, due, trio.current_time(), resp.status)

    def close(self) -> None:
        for c in self._slots:
            c.close()


class ShapeSlot:
    def __init__(self, conn: HttpConnection, token: str) -> None:
        self.conn = conn
        self.token = token
        self.head = b""
        self.ws: trio_websocket.WebSocketConnection | None = None


class ShapeBaseline:
    """The same-shape ceiling: `POST /api/bets` answered 202, plus the pushed `bet_confirmed`
    on the slot's own WebSocket, followed like tap's (`loadgen.peers.servers.shape_app`)."""

    route = BET_HTTP
    steady_s = 0.0
    window_s = 0.0

    def __init__(self, target: Target, connections: int, timeout: float) -> None:
        self.target = target
        self.recorder = Recorder()
        self.tracker: ConfirmationTracker | None = ConfirmationTracker()
        self.timeout = timeout
        self._slots = [ShapeSlot(target.connection(), f"s{i:06d}") for i in range(connections)]
        for slot in self._slots:
            headers = (
                b"Content-Type: application/json\r\nAuthorization: Bearer "
                + slot.token.encode()
                + b"\r\n"
            )
            slot.head = slot.conn.head("POST", "/api/bets", headers)
        self.body = bet_shaped_body()

    @property
    def slots(self) -> list[Any]:
        return self._slots

    async def connect(self, nursery: trio.Nursery) -> None:
        limiter = trio.CapacityLimiter(32)  # a few handshakes at a time: the backlog is finite

        async def one(slot: ShapeSlot) -> None:
            async with limiter:
                ws = await trio_websocket.connect_websocket_url(
                    nursery, self.target.ws_url, message_queue_size=64, receive_buffer_size=65536
                )
                await ws.send_message(f'{{"type":"auth","token":"{slot.token}"}}')
                await ws.get_message()  # "ready": bets with this token push to this socket
            slot.ws = ws
            nursery.start_soon(self._read, ws)

        async with trio.open_nursery() as n:
            for slot in self._slots:
                n.start_soon(one, slot)

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        assert self.tracker is not None
        try:
            while True:
                raw = await ws.get_message()
                now = trio.current_time()
                f = frame_decoder.decode(raw)
                if f.type == "bet_confirmed" and f.bet is not None:
                    self.tracker.answered(f.bet.bet_id, "confirmed", None, now)
        except trio_websocket.ConnectionClosed:
            return

    async def before_probe(self, rate: float) -> None:
        await warm_all([s.conn for s in self._slots])

    async def settle(self, within: float) -> None:
        assert self.tracker is not None
        for _ in range(max(1, round(within / 0.05))):
            if not self.tracker.unanswered:
                return
            await trio.sleep(0.05)

    async def fire(self, slot: ShapeSlot, due: float) -> None:
        assert self.tracker is not None
        try:
            with trio.fail_after(self.timeout):
                resp = await slot.conn.send(slot.head, self.body)
        except trio.TooSlowError:
            self.recorder.record(self.route, due, trio.current_time(), TRANSPORT, "timeout")
            return
        except (HttpError, OSError, trio.BrokenResourceError) as e:
            self.recorder.record(self.route, due, trio.current_time(), TRANSPORT, type(e).__name__)
            return
        now = trio.current_time()
        self.recorder.record(self.route, due, now, resp.status)
        if resp.status == 202:
            self.tracker.accepted(bet_decoder.decode(resp.body).bet_id, now)

    async def close(self) -> None:
        for s in self._slots:
            s.conn.close()
            if s.ws is not None:
                with trio.move_on_after(1.0):
                    await s.ws.aclose()


class EchoConn:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.waiting: dict[str, tuple[float, trio.Event]] = {}
        self.seq = 0


class WsEcho:
    """A `place_bet`-shaped frame to a WebSocket echo; the echo is the answer."""

    route = ECHO_ROUTE
    tracker: ConfirmationTracker | None = None
    steady_s = 0.0
    window_s = 0.0

    def __init__(self, target: Target, connections: int, timeout: float) -> None:
        self.target = target
        self.count = connections
        self.timeout = timeout
        self.recorder = Recorder()
        self._slots: list[EchoConn] = []
        body = bet_shaped_body().decode()
        self.suffix = "," + body[1:]  # the bet's fields after the type and req_id

    @property
    def slots(self) -> list[Any]:
        return self._slots

    async def connect(self, nursery: trio.Nursery) -> None:
        async def one() -> None:
            ws = await trio_websocket.connect_websocket_url(
                nursery, self.target.ws_url, message_queue_size=64, receive_buffer_size=65536
            )
            conn = EchoConn(ws)
            self._slots.append(conn)
            nursery.start_soon(self._read, conn)

        limiter = trio.CapacityLimiter(32)

        async def limited() -> None:
            async with limiter:
                await one()

        async with trio.open_nursery() as n:
            for _ in range(self.count):
                n.start_soon(limited)

    async def _read(self, conn: EchoConn) -> None:
        try:
            while True:
                raw = await conn.ws.get_message()
                now = trio.current_time()
                f = frame_decoder.decode(raw)
                waiting = conn.waiting.pop(f.req_id or "", None)
                if waiting is not None:
                    self.recorder.record(self.route, waiting[0], now, 200)
                    waiting[1].set()
        except trio_websocket.ConnectionClosed:
            return

    async def before_probe(self, rate: float) -> None:
        return None

    async def settle(self, within: float) -> None:
        return None

    async def fire(self, conn: EchoConn, due: float) -> None:
        conn.seq += 1
        req_id = f"{id(conn) & 0xFFFFFF:06x}{conn.seq:010x}"
        event = trio.Event()
        conn.waiting[req_id] = (due, event)
        try:
            await conn.ws.send_message(f'{{"type":"place_bet","req_id":"{req_id}"{self.suffix}')
        except trio_websocket.ConnectionClosed:
            conn.waiting.pop(req_id, None)
            self.recorder.record(self.route, due, trio.current_time(), TRANSPORT, "ws_closed")
            return
        with trio.move_on_after(self.timeout):
            await event.wait()
        if conn.waiting.pop(req_id, None) is not None:
            self.recorder.record(self.route, due, trio.current_time(), TRANSPORT, "timeout")

    async def close(self) -> None:
        for c in self._slots:
            with trio.move_on_after(1.0):
                await c.ws.aclose()


class BetWorkload:
    """The crowd of virtual users placing unique signed bets over one transport."""

    def __init__(self, crowd: Crowd, signer: Signer, transport: str) -> None:
        self.crowd = crowd
        self.signer = signer
        self.transport = transport
        self.route = BET_WS if transport == "ws" else BET_HTTP
        market = crowd.market
        assert market is not None, "log the crowd in first"
        # + 1 s: the deciding tick after a column's end, and the settlement's commit.
        self.steady_s = market.settle_horizon_ms() / 1000.0 + 1.0
        self.window_s = market.spec.column_ms / 1000.0

    @property
    def recorder(self) -> Recorder:
        return self.crowd.recorder

    @recorder.setter
    def recorder(self, value: Recorder) -> None:
        self.crowd.recorder = value

    @property
    def tracker(self) -> ConfirmationTracker | None:
        return self.crowd.tracker

    @property
    def slots(self) -> list[Any]:
        return self.crowd.users

    async def before_probe(self, rate: float) -> None:
        if self.crowd.spec.transport != self.transport:
            self.crowd.spec.transport = self.transport  # type: ignore[assignment]
            for u in self.crowd.users:
                u.ready.clear()  # signed for the other transport
        self.crowd.rate = rate
        await self.crowd.presign_once(self.signer)
        if self.transport == "http":
            await warm_all([u.http for u in self.crowd.users])

    async def settle(self, within: float) -> None:
        """Wait until every accepted bet has been answered (the writer and the WebSocket
        fan-out have caught up), for at most `within` seconds."""
        await self.crowd.drain(within)

    async def fire(self, slot: Any, due: float) -> None:
        await self.crowd.fire(slot, due)


# ── probing ───────────────────────────────────────────────────────────────────────────────────


def judge(
    route: str,
    recorder: Recorder,
    rate: float,
    measure_s: float,
    confirmations: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One probe's figures and verdict (see the module docstring for "sustained").

    `confirmations`: the probe's 202 → pushed-confirmation window (`ConfirmationTracker.
    window_summary`), for targets that push one; its p99 must hold the same limit as the
    answers', or the probe did not sustain its rate (the player waits for the confirmation).
    """
    stats = recorder.routes.get(route)
    expected = rate * measure_s
    shortfall = sum(recorder.shortfall.values())
    if stats is None or stats.count == 0:
        return {
            "rate": rate,
            "passed": False,
            "count": 0,
            "why": "no answers",
            "shortfall": shortfall,
        }
    races = sum(n for c, n in stats.codes.items() if c in RACE_CODES)
    other_errors = stats.errors - races
    p99 = stats.hist.percentile(99) / 1000.0
    why = []
    if p99 > P99_LIMIT_MS:
        why.append(f"p99 {p99:.0f} ms")
    if stats.server_errors:
        why.append(f"{stats.server_errors} 5xx/transport")
    if other_errors - stats.server_errors:
        why.append(f"{other_errors - stats.server_errors} refused")
    if races > RACE_SHARE * stats.count:
        why.append(f"{races} cell_not_placeable")
    if shortfall:
        why.append(f"{shortfall} arrivals not sent")
    if stats.count < 0.95 * expected:
        why.append(f"only {stats.count} of {expected:.0f} answered")
    if confirmations is not None:
        c99 = confirmations["p99_ms"]
        if c99 is None:
            why.append(f"{confirmations['unanswered']} confirmations missing")
        elif c99 > P99_LIMIT_MS:
            why.append(f"confirm p99 {c99:.0f} ms")
    return {
        "rate": rate,
        "passed": not why,
        "confirm": confirmations,
        "why": ", ".join(why),
        "count": stats.count,
        "achieved": round(stats.count / measure_s, 1),
        "latency": stats.hist.summary_ms(),
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "codes": dict(stats.codes),
        "shortfall": shortfall,
    }


def limiting_party(probe: dict[str, Any], cpus: int) -> str:
    """Who most likely ran out at a failed probe.

    "generator" or "server": that process was near a full core (or the generator could not
    send every arrival). "machine": together they kept every core busy, so neither figure is a
    capacity of its own. "contention": the dispatcher woke late while neither was busy —
    something else on the machine held the CPU, and the probe says little. "unclear" otherwise.
    """
    gen = probe.get("generator_cpu_pct") or 0.0
    server = probe.get("server_cpu_pct") or 0.0
    signer = probe.get("signer_cpu_pct") or 0.0
    waited = max(probe.get("generator_wait_pct") or 0.0, probe.get("server_wait_pct") or 0.0)
    lag = probe.get("dispatch_lag_p99_ms", 0.0)
    if gen >= CPU_WARN_PCT or probe.get("shortfall", 0):
        return "generator"
    if server >= CPU_WARN_PCT:
        return "server"
    if gen + server + signer >= 85.0 * cpus:
        return "machine"
    if waited >= WAIT_LIMIT_PCT or lag > LAG_WARN_MS:
        return "contention"
    return "server" if server >= 70.0 else "unclear"


class Prober:
    def __init__(
        self, nursery: trio.Nursery, plan: Plan, monitor: Monitor, say: Callable[[str], None]
    ) -> None:
        self.nursery = nursery
        self.plan = plan
        self.monitor = monitor
        self.say = say
        self.cpus = _cpus()

    async def probe(
        self, workload: Workload, rate: float, measure_s: float | None = None
    ) -> dict[str, Any]:
        plan = self.plan
        measure = max(plan.measure_s if measure_s is None else measure_s, workload.window_s)
        warmup = max(plan.warmup_s, workload.steady_s)
        await workload.before_probe(rate)
        recorder = Recorder()
        workload.recorder = recorder
        pool = SlotPool(workload.slots, workload.fire, recorder)
        pool.bind(self.nursery)
        dispatcher = Dispatcher()
        schedule = Schedule([Stage(kind="steady", duration=warmup + measure, target=rate)])
        t0 = trio.current_time() + 0.02
        recorder.measure_from = t0 + warmup
        tracker = workload.tracker
        if tracker is not None:
            tracker.start_window(recorder.measure_from)
        # CPU and core waits over the measured window only: the warm-up of a tap probe is
        # not yet in its steady state (fewer settlements than bets).
        sent_before = 0

        async def restart_at_window() -> None:
            nonlocal sent_before
            await trio.sleep_until(recorder.measure_from)
            sent_before = dispatcher.dispatched
            self.monitor.restart()

        self.monitor.restart()
        async with trio.open_nursery() as timing:
            timing.start_soon(restart_at_window)
            await dispatcher.drive(schedule.uniform(), t0, pool.submit)
        with trio.move_on_after(plan.timeout_s + 1.0):
            await pool.wait_idle()
        usage = self.monitor.overall()
        sent_measured = dispatcher.dispatched - sent_before
        confirmations = None
        if tracker is not None:
            # A confirmation later than 1 s counts as missing (far past the p99 limit anyway).
            for _ in range(100):
                if not tracker.window_unanswered():
                    break
                await trio.sleep(0.01)
            confirmations = tracker.window_summary()
        result = judge(workload.route, recorder, rate, measure, confirmations)
        lag = dispatcher.lag.percentile(99) / 1000.0
        server_s = usage.get("server_cpu_s")
        result.update(
            measure_s=measure,
            sent=dispatcher.dispatched,
            # Server CPU per request sent in the measured window, over that window (and what
            # its requests left to finish after it): user + system time of the server's process
            # tree, from /proc.
            warmup_s=warmup,
            server_cpu_ms_per_req=(
                round(1000.0 * server_s / sent_measured, 3)
                if server_s is not None and sent_measured
                else None
            ),
            generator_cpu_pct=usage["cpu_pct"],
            signer_cpu_pct=usage["signer_cpu_pct"],
            server_cpu_pct=usage["server_cpu_pct"],
            generator_wait_pct=usage["cpu_wait_pct"],
            server_wait_pct=usage["server_cpu_wait_pct"],
            dispatch_lag_p99_ms=lag,
            busy_at_end=pool.busy,
        )
        p99 = result.get("latency", {}).get("p99_ms", float("nan"))
        c99 = (confirmations or {}).get("p99_ms")
        shown_c99 = "" if confirmations is None else f"  conf p99 {_ms(c99)}"
        cpu_ms = result["server_cpu_ms_per_req"]
        self.say(
            f"  {rate:7.0f}/s  {'pass' if result['passed'] else 'FAIL'}  p99 {p99:7.1f} ms"
            f"{shown_c99}  gen {usage['cpu_pct'] or 0:3.0f}%  "
            f"server {usage['server_cpu_pct'] or 0:3.0f}% "
            f"({'?' if cpu_ms is None else f'{cpu_ms:.2f}'} ms/req)  "
            f"waited {usage['cpu_wait_pct'] or 0:2.0f}%/{usage['server_cpu_wait_pct'] or 0:2.0f}%"
            + (f"  ({result['why']})" if result["why"] else "")
        )
        # Let the server finish what it accepted before the next probe starts, so a probe past
        # capacity does not leave its backlog to the next one.
        with trio.move_on_after(plan.timeout_s + 1.0):
            await pool.wait_idle()
        settle_started = trio.current_time()
        await workload.settle(plan.drain_s)
        await trio.sleep(plan.settle_s)
        result["settled_in_s"] = round(trio.current_time() - settle_started, 2)
        return result

    async def capacity(self, name: str, workload: Workload) -> dict[str, Any]:
        """The highest rate `workload` sustains: search, then repeat the top probe.

        A rate counts only once it passed again on a longer repeat (`Plan.confirm_s`): a single
        2-second probe can pass by luck at a rate the target cannot hold, and the 70 % run would
        then be taken from a capacity nobody measured twice.
        """
        freeze_heap()
        self.say(f"{name}: server CPU per request at {self.plan.cpu_rate:.0f}/s")
        at_cpu_rate = await self.probe(workload, self.plan.cpu_rate)
        self.say(f"{name}: searching for the highest sustained rate")
        search = CapacitySearch(
            self.plan.start_rate, growth=1.5, max_probes=self.plan.max_probes, confirmations=1
        )
        probes = []
        retries = 0
        while (rate := search.next_rate()) is not None:
            repeat = search.passes_at(rate) > 0
            measure = self.plan.confirm_s if repeat else None
            result = await self.probe(workload, rate, measure)
            if (
                not result["passed"]
                and retries < self.plan.max_retries
                and limiting_party(result, self.cpus) == "contention"
            ):
                # The machine, not the target, was busy: that probe measured little. Once more.
                retries += 1
                self.say("  (something else held the cores during that probe: probing again)")
                probes.append({**result, "discarded": "contention"})
                result = await self.probe(workload, rate, measure)
            result["repeat"] = repeat
            probes.append(result)
            search.observe(rate, result["passed"])
        best = search.sustained
        at_best = [p for p in probes if p["rate"] == best and p["passed"]]
        last = at_best[-1] if at_best else None
        failed = [
            p for p in probes if not p["passed"] and p["rate"] > best and "discarded" not in p
        ]
        first_fail = min(failed, key=lambda p: p["rate"]) if failed else None
        limited_by = "not reached" if first_fail is None else limiting_party(first_fail, self.cpus)
        confirm = (last or {}).get("confirm") or {}
        summary = {
            "max_rate": best,
            "single_probe_max": search.best,
            "p99_ms_at_max": last["latency"]["p99_ms"] if last and "latency" in last else None,
            "confirm_p99_ms_at_max": confirm.get("p99_ms"),
            "server_cpu_ms_per_req_at_max": last["server_cpu_ms_per_req"] if last else None,
            "cpu_rate": self.plan.cpu_rate,
            "server_cpu_ms_per_req_at_cpu_rate": at_cpu_rate["server_cpu_ms_per_req"],
            "at_cpu_rate": at_cpu_rate,
            "limited_by": limited_by,
            "probes": probes,
        }
        self.say(f"{name}: {best:.0f}/s sustained (limited by {limited_by})")
        return summary


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


# ── the benches ───────────────────────────────────────────────────────────────────────────────


def _say(text: str) -> None:
    print(text, flush=True)


async def bench_baseline_http(kind: str, plan: Plan, data_dir: Path) -> dict[str, Any]:
    async with start_bench_server(kind, data_dir) as server, trio.open_nursery() as nursery:
        workload = HttpBaseline(Target(server.base_url), plan.vus, plan.timeout_s)
        prober = Prober(nursery, plan, Monitor(server=server), _say)
        try:
            result = await prober.capacity(f"{kind} HTTP 202", workload)
        finally:
            workload.close()
        nursery.cancel_scope.cancel()
    return result


async def bench_echo(plan: Plan, data_dir: Path) -> dict[str, Any]:
    async with start_bench_server("echo", data_dir) as server, trio.open_nursery() as nursery:
        workload = WsEcho(Target(server.base_url), plan.vus, plan.timeout_s)
        await workload.connect(nursery)
        prober = Prober(nursery, plan, Monitor(server=server), _say)
        result = await prober.capacity("WS echo", workload)
        await workload.close()
        nursery.cancel_scope.cancel()
    return result


async def bench_shape(plan: Plan, data_dir: Path) -> dict[str, Any]:
    """The same-shape ceiling: 202 plus one pushed WebSocket frame per request."""
    async with start_bench_server("shape", data_dir) as server, trio.open_nursery() as nursery:
        workload = ShapeBaseline(Target(server.base_url), plan.vus, plan.timeout_s)
        await workload.connect(nursery)
        prober = Prober(nursery, plan, Monitor(server=server), _say)
        try:
            result = await prober.capacity("shape (202 + WS frame)", workload)
        finally:
            await workload.close()
        nursery.cancel_scope.cancel()
    return result


def bench_spec(plan: Plan, vus: int, transport: str, keep_alive_s: float = 4.0) -> ClientSpec:
    """`keep_alive_s`: under the target's keep-alive timeout (tap's is 30 s, Hypercorn's 5 s):
    at the low rates of a capacity search a user taps every few seconds, and a new connection
    per tap would be measured as the bet path's cost."""
    return ClientSpec(
        vus=vus,
        market_data_vus=1,
        transport=transport,  # type: ignore[arg-type]
        timeout=plan.timeout_s,
        drain="10s",
        keep_alive=keep_alive_s,
        setup_concurrency=32,
        # The nearest two placeable columns: a bet settles within ≈ 22 s of being placed, so a
        # probe reaches its steady state after that long (`BetWorkload.steady_s`); with any of
        # the twelve it would take a minute, and shorter probes would carry the settlement of
        # the probes before them instead of their own. Two, not one: at ≈ 1,000 bets/s from
        # 500 users one column's good cells run out (a user taps a cell once).
        columns=BENCH_COLUMNS,
    )


async def bench_bets(
    server: RunningServer,
    plan: Plan,
    vus: int,
    *,
    name: str,
    ws: bool,
    at_70: bool,
) -> dict[str, Any]:
    """Capacity of a server's bet path over HTTP (and WebSocket), then p99 at 70 % of it."""
    out: dict[str, Any] = {}
    keep_alive = TAP_CLIENT_KEEP_ALIVE_S if name == "tap" else 4.0
    crowd = Crowd(Target(server.base_url), bench_spec(plan, vus, "http", keep_alive), Recorder())
    async with Signer(vus, crowd.signer_seed) as signer:
        async with trio.open_nursery() as nursery:
            _say(f"{name}: logging in {vus} users")
            started = time.monotonic()
            await crowd.setup(nursery, signer)
            out["setup_s"] = round(time.monotonic() - started, 2)
            nursery.start_soon(crowd.watch_grid)
            nursery.start_soon(crowd.presign, signer)
            # The server's CPU with no bets (feed, grid, price pushes to the market-data user):
            # the floor under every probe's CPU per bet.
            idle = server.cpu_meter()
            await trio.sleep(2.0)
            out["idle_server_cpu_pct"] = idle.overall()
            monitor = Monitor(signer=signer, server=server)
            prober = Prober(nursery, plan, monitor, _say)
            http = BetWorkload(crowd, signer, "http")
            out["http"] = await prober.capacity(f"{name} HTTP bets", http)
            if ws:
                out["ws"] = await prober.capacity(
                    f"{name} WS bets", BetWorkload(crowd, signer, "ws")
                )
            if at_70 and out["http"]["max_rate"] > 0:
                rate = round(0.7 * out["http"]["max_rate"])
                _say(f"{name}: {plan.at_70_s:.0f} s at 70 % of HTTP capacity ({rate}/s)")
                r = await prober.probe(http, rate, plan.at_70_s)
                stats = r.get("statuses", {})
                fives = sum(n for s, n in stats.items() if s.startswith("5") or s == "0")
                confirm = r.get("confirm") or {}
                out["at_70pct"] = {
                    "rate": rate,
                    "p99_ms": r.get("latency", {}).get("p99_ms"),
                    "server_errors": fives,
                    "confirm_p50_ms": confirm.get("p50_ms"),
                    "confirm_p99_ms": confirm.get("p99_ms"),
                    "server_cpu_ms_per_bet": r.get("server_cpu_ms_per_req"),
                    "server_cpu_pct": r.get("server_cpu_pct"),
                    "probe": r,
                }
            await crowd.drain(10.0)
            out["bets"] = crowd.tracker.summary()
            out["crowd"] = crowd.summary()
            nursery.cancel_scope.cancel()
        crowd.close()
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


GOALS: dict[str, tuple[str, float]] = {
    "http_vs_quart >= 0.65": ("http_vs_quart", 0.65),
    "http_vs_shape >= 0.8": ("http_vs_shape", 0.8),
    "ws_vs_echo >= 0.80": ("ws_vs_echo", 0.8),
}


async def bench_all(plan: Plan, data_dir: Path, vus: int, tap_config: str | None) -> dict[str, Any]:
    """One run: every baseline, then tap, all on servers started here, back to back."""
    report: dict[str, Any] = {"bench": "all", "targets": {}}
    t = report["targets"]
    t["bare_http"] = await bench_baseline_http("bare", plan, data_dir)
    t["quart_http"] = await bench_baseline_http("quart", plan, data_dir)
    t["shape_http"] = await bench_shape(plan, data_dir)
    t["ws_echo"] = await bench_echo(plan, data_dir)
    reason = tap_unavailable()
    if reason is None:
        try:
            async with start_tap_server(
                None, TAP_BENCH_OVERRIDES, data_dir / "tap", config_path=tap_config
            ) as server:
                tap = await bench_bets(server, plan, vus, name="tap", ws=True, at_70=True)
        except ServerFailed as e:
            reason = f"tap did not start: {e}"
    if reason is not None:
        _say(f"tap: skipped — {reason.strip().splitlines()[-1]}")
        report["tap_skipped"] = reason
        tap = {}
    if tap:
        t["tap_http"] = tap["http"]
        t["tap_ws"] = tap["ws"]
        report["tap_at_70pct"] = tap.get("at_70pct")
        report["tap_bets"] = tap["bets"]
        report["tap_setup_s"] = tap["setup_s"]
        report["tap_idle_server_cpu_pct"] = tap.get("idle_server_cpu_pct")
    rate = {k: v["max_rate"] for k, v in t.items()}
    report["ratios"] = {
        "http_vs_bare": _ratio(rate.get("tap_http"), rate.get("bare_http")),
        "http_vs_quart": _ratio(rate.get("tap_http"), rate.get("quart_http")),
        "http_vs_shape": _ratio(rate.get("tap_http"), rate.get("shape_http")),
        "ws_vs_echo": _ratio(rate.get("tap_ws"), rate.get("ws_echo")),
    }
    # Server CPU per request at the same rate (`Plan.cpu_rate`): how many times a baseline's
    # cost a tap bet is — steadier than capacities on a shared machine.
    cpu = {k: v.get("server_cpu_ms_per_req_at_cpu_rate") for k, v in t.items()}
    report["cpu_ratios"] = {
        "http_over_quart": _ratio(cpu.get("tap_http"), cpu.get("quart_http")),
        "http_over_shape": _ratio(cpu.get("tap_http"), cpu.get("shape_http")),
        "ws_over_echo": _ratio(cpu.get("tap_ws"), cpu.get("ws_echo")),
    }
    report["goals"] = run_goals(report)
    return report


def run_goals(report: dict[str, Any]) -> dict[str, bool | None]:
    """The issue-12 goals, judged on one run's figures (None: not measured)."""
    r = report["ratios"]
    goals: dict[str, bool | None] = {
        goal: None if r.get(key) is None else r[key] >= floor
        for goal, (key, floor) in GOALS.items()
    }
    at70 = report.get("tap_at_70pct") or {}
    goals["p99 <= 100 ms at 70 % with 0 5xx"] = (
        None
        if not at70
        else at70["p99_ms"] is not None
        and at70["p99_ms"] <= P99_LIMIT_MS
        and at70["server_errors"] == 0
    )
    c99 = at70.get("confirm_p99_ms")
    goals["202 -> bet_confirmed p99 <= 100 ms at 70 %"] = (
        None if not at70 else c99 is not None and c99 <= P99_LIMIT_MS
    )
    return goals


def _spread(values: list[float | None]) -> dict[str, Any] | None:
    """min / median / max of the runs' figures (None where a run measured nothing)."""
    have = sorted(v for v in values if v is not None)
    if not have:
        return None
    return {
        "min": have[0],
        "median": statistics.median(have),
        "max": have[-1],
        "runs": values,
    }


async def bench_runs(
    plan: Plan, data_dir: Path, vus: int, tap_config: str | None, runs: int
) -> dict[str, Any]:
    """`runs` complete runs back to back, and the spread of every figure across them.

    Each run measures every target afresh, so each run's ratios are same-run ratios; the spread
    says how far one run can be trusted on this machine. Goals hold only if they hold in every
    run (the issue asks for p99 at 70 % "in each of three consecutive runs").
    """
    if runs == 1:
        return await bench_all(plan, data_dir, vus, tap_config)
    results = []
    for i in range(runs):
        _say(f"── run {i + 1} of {runs} ──")
        results.append(await bench_all(plan, data_dir / f"run{i + 1}", vus, tap_config))
    targets = sorted({k for r in results for k in r["targets"]})
    spread: dict[str, Any] = {
        "max_rate": {
            k: _spread([r["targets"].get(k, {}).get("max_rate") for r in results]) for k in targets
        },
        "ratios": {k: _spread([r["ratios"].get(k) for r in results]) for k in results[0]["ratios"]},
        "tap_at_70pct": {
            k: _spread([(r.get("tap_at_70pct") or {}).get(k) for r in results])
            for k in ("rate", "p99_ms", "confirm_p99_ms", "server_cpu_ms_per_bet", "server_errors")
        },
    }
    goals: dict[str, bool | None] = {}
    for r in results:
        for goal, met in r["goals"].items():
            prev = goals.get(goal, True)
            goals[goal] = None if met is None or prev is None else prev and met
    return {"bench": "all", "runs": results, "spread": spread, "goals": goals}


async def bench_naive(
    plan: Plan, data_dir: Path, vus: int, tap_config: str | None
) -> dict[str, Any]:
    report: dict[str, Any] = {"bench": "naive"}
    async with start_naive_server(data_dir / "naive") as server:
        naive = await bench_bets(server, plan, vus, name="naive", ws=False, at_70=False)
    report["naive_http"] = naive["http"]
    report["naive_bets"] = naive["bets"]
    reason = tap_unavailable()
    if reason is None:
        try:
            async with start_tap_server(
                None, TAP_BENCH_OVERRIDES, data_dir / "tap", config_path=tap_config
            ) as server:
                tap = await bench_bets(server, plan, vus, name="tap", ws=False, at_70=False)
            report["tap_http"] = tap["http"]
            report["tap_bets"] = tap["bets"]
        except ServerFailed as e:
            reason = f"tap did not start: {e}"
    if reason is not None:
        _say(f"tap: skipped — {reason.strip().splitlines()[-1]}")
        report["tap_skipped"] = reason
    ratio = _ratio(report.get("tap_http", {}).get("max_rate"), report["naive_http"]["max_rate"])
    report["ratios"] = {"tap_vs_naive": ratio}
    report["goals"] = {"tap_vs_naive >= 10": None if ratio is None else ratio >= 10}
    return report


class FanoutProbe:
    """N WebSocket clients on `prices:{symbol}`, timing each tick from its `ts` to its arrival."""

    def __init__(self, url: str, symbol: str) -> None:
        self.url = url
        self.symbol = symbol
        self.latency = Histogram()  # µs, tick timestamp (server wall clock) → arrival here
        self.frames = 0
        self.connected = 0
        self.closed = 0
        self.measuring = False

    async def client(
        self,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with limiter:  # a few handshakes at a time: the listen backlog is finite
            ws = await trio_websocket.connect_websocket_url(
                nursery, self.url, message_queue_size=64, receive_buffer_size=65536
            )
            subscribe = {"type": "subscribe", "channels": [f"prices:{self.symbol}"]}
            await ws.send_message(msgspec.json.encode(subscribe).decode())
        self.connected += 1
        task_status.started()
        try:
            while True:
                f = frame_decoder.decode(await ws.get_message())
                if self.measuring and f.type == "price" and f.ts is not None:
                    self.latency.record(max(0, int((time.time() * 1000 - f.ts) * 1000)))
                    self.frames += 1
        except trio_websocket.ConnectionClosed:
            self.closed += 1


async def bench_fanout(
    plan: Plan, data_dir: Path, clients: int, target_kind: str, tap_config: str | None
) -> dict[str, Any]:
    """N WebSocket clients subscribed to `prices`; latency from the tick's `ts` to arrival.

    The tick's `ts` is stamped by the server's clock and read here against this machine's wall
    clock: both are the same clock on loopback.
    """
    report: dict[str, Any] = {"bench": "fanout", "target": target_kind, "clients": clients}

    async def measure(server: RunningServer) -> None:
        probe = FanoutProbe(Target(server.base_url).ws_url, "BTC-USD")
        monitor = Monitor(server=server)
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(32)
            async with trio.open_nursery() as connecting:
                for _ in range(clients):
                    connecting.start_soon(nursery.start, probe.client, nursery, limiter)
            _say(f"fanout: {probe.connected} clients subscribed; measuring {plan.fanout_s:.0f} s")
            freeze_heap()
            monitor.restart()
            probe.measuring = True
            await trio.sleep(plan.fanout_s)
            probe.measuring = False
            report.update(monitor.overall())
            nursery.cancel_scope.cancel()
        report["connected"] = probe.connected
        report["tick_to_client"] = probe.latency.summary_ms()
        report["frames_per_s"] = round(probe.frames / plan.fanout_s, 1)
        report["closed_by_server"] = probe.closed

    if target_kind == "naive":
        async with start_naive_server(data_dir / "naive") as server:
            await measure(server)
        return report
    reason = tap_unavailable()
    if reason is not None:
        report["skipped"] = reason
        return report
    async with start_tap_server(
        None, TAP_BENCH_OVERRIDES, data_dir / "tap", config_path=tap_config
    ) as server:
        await measure(server)
    return report


async def bench_client(data_dir: Path, requests: int = 3000) -> dict[str, Any]:
    """CPU per request of `loadgen.generator.h1` vs httpx, sequential, against the bare server."""
    import httpx

    body = bet_shaped_body()
    out: dict[str, Any] = {"bench": "client", "requests": requests}
    async with start_bench_server("bare", data_dir) as server:
        conn = HttpConnection(server.host, server.port)
        head = conn.head("POST", "/api/bets", b"Content-Type: application/json\r\n")
        for _ in range(200):
            await conn.send(head, body)
        cpu, wall = time.process_time(), time.monotonic()
        for _ in range(requests):
            await conn.send(head, body)
        out["h1_cpu_us_per_request"] = round((time.process_time() - cpu) / requests * 1e6, 1)
        out["h1_wall_us_per_request"] = round((time.monotonic() - wall) / requests * 1e6, 1)
        conn.close()
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            headers = {"Content-Type": "application/json"}
            for _ in range(200):
                await client.post("/api/bets", content=body, headers=headers)
            cpu, wall = time.process_time(), time.monotonic()
            for _ in range(requests):
                await client.post("/api/bets", content=body, headers=headers)
            out["httpx_cpu_us_per_request"] = round((time.process_time() - cpu) / requests * 1e6, 1)
            out["httpx_wall_us_per_request"] = round((time.monotonic() - wall) / requests * 1e6, 1)
    _say(
        f"client: h1 {out['h1_cpu_us_per_request']} µs CPU/request, httpx "
        f"{out['httpx_cpu_us_per_request']} µs CPU/request (sequential, keep-alive)"
    )
    return out


async def bench_delegated(module: str, quick: bool, data_dir: Path) -> dict[str, Any]:
    """Run `loadgen.benches.<module>.run(...)`, written alongside this bench, when it exists.

    It is passed `quick` and `directory` (this bench's data directory, on the project's disk)
    when its signature takes them. A synchronous `run` may start its own trio loop, so it runs
    in a worker thread; a coroutine function is awaited here.
    """
    try:
        mod = importlib.import_module(f"loadgen.benches.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"loadgen.benches.{module}":
            raise
        return {"bench": module, "skipped": f"loadgen/benches/{module}.py is not present"}
    run_fn: Callable[..., Any] = mod.run
    params = inspect.signature(run_fn).parameters
    kwargs: dict[str, Any] = {}
    if "quick" in params:
        kwargs["quick"] = quick
    if "directory" in params:
        kwargs["directory"] = str(data_dir)
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    _say(f"{module}: running loadgen.{module}.run({shown})")
    if inspect.iscoroutinefunction(run_fn):
        result = await run_fn(**kwargs)
    else:
        result = await trio.to_thread.run_sync(lambda: run_fn(**kwargs))
    return {"bench": module, "result": result}


async def bench_scale(quick: bool, data_dir: Path) -> dict[str, Any]:
    """One process, then core + 1 and core + 2 edges (loadgen/benches/bench_scale.py prints its
    table)."""
    from loadgen.benches import bench_scale

    return {"bench": "scale", **await bench_scale.run(quick=quick, directory=str(data_dir))}


async def run(
    which: str,
    *,
    quick: bool,
    data_dir: Path,
    vus: int | None = None,
    clients: int | None = None,
    fanout_target: str = "tap",
    tap_config: str | None = None,
    runs: int = 1,
) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    users = vus or plan.vus
    started = time.monotonic()
    benches: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "all": lambda: bench_runs(plan, data_dir, users, tap_config, max(1, runs)),
        "naive": lambda: bench_naive(plan, data_dir, users, tap_config),
        "fanout": lambda: bench_fanout(
            plan, data_dir, clients or plan.fanout_clients, fanout_target, tap_config
        ),
        "client": lambda: bench_client(data_dir),
        "batcher": lambda: bench_delegated("bench_batcher", quick, data_dir),
        "resolver": lambda: bench_delegated("bench_resolver", quick, data_dir),
        "redis": lambda: bench_delegated("bench_redis", quick, data_dir),
        "betpath": lambda: bench_delegated("bench_betpath", quick, data_dir),
        "scale": lambda: bench_scale(quick, data_dir),
    }
    load_before = _loadavg()
    report = await benches[which]()
    report.update(
        quick=quick,
        plan=msgspec.to_builtins(plan),
        data_dir=str(data_dir),
        elapsed_s=round(time.monotonic() - started, 1),
        machine={"cpus": _cpus(), "loadavg_1m_before": load_before, "loadavg_1m_after": _loadavg()},
    )
    goals = report.get("goals", {})
    report["ok"] = all(v is not False for v in goals.values())
    return report


def _loadavg() -> float | None:
    """The 1-minute load average: above the CPU count, other work competed with the bench."""
    import os

    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def format_bench(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"bench {report['bench']} ({'quick' if report['quick'] else 'full'}, "
        f"{report['elapsed_s']:.0f} s, {m['cpus']} CPUs, load average "
        f"{m['loadavg_1m_before']} before / {m['loadavg_1m_after']} after)"
    ]
    if (m["loadavg_1m_before"] or 0) > 0.5 * m["cpus"]:
        lines.append("warning: the machine was busy before the bench started; figures are noisy")
    for i, run in enumerate(report.get("runs", [report])):
        if "runs" in report:
            lines.append(f"── run {i + 1} ──")
        lines += _format_run(run)
    spread = report.get("spread")
    if spread:
        lines.append(f"spread over {len(report['runs'])} runs (min / median / max):")
        groups = ("max_rate", "ratios", "cpu_ratios", "server_cpu_ms_per_req_at_cpu_rate")
        for group in (*groups, "tap_at_70pct"):
            for key, sp in spread[group].items():
                if sp is not None:
                    lines.append(
                        f"  {group}.{key}: {sp['min']:g} / {sp['median']:g} / {sp['max']:g}"
                    )
    for goal, met in report.get("goals", {}).items():
        lines.append(f"goal {goal}: {'n/a' if met is None else 'met' if met else 'NOT met'}")
    return "\n".join(lines + _format_rest(report))


def _format_run(report: dict[str, Any]) -> list[str]:
    lines = []
    targets = dict(report.get("targets", {}))
    for key in ("naive_http", "tap_http"):
        if key in report and key not in targets:
            targets[key] = report[key]
    if targets:
        lines.append(
            f"{'target':<12}{'sustained/s':>12}{'1-probe/s':>10}{'p99 at max':>12}"
            f"{'conf p99':>10}{'CPU/req':>10}{'CPU@fixed':>10}  limited by"
        )
        for name, t in targets.items():
            cpu = t.get("server_cpu_ms_per_req_at_max")
            fixed = t.get("server_cpu_ms_per_req_at_cpu_rate")
            c99 = t.get("confirm_p99_ms_at_max")
            lines.append(
                f"{name:<12}{t['max_rate']:>12.0f}{t.get('single_probe_max', 0):>10.0f}"
                f"{_ms(t.get('p99_ms_at_max')):>12}"
                f"{'' if c99 is None else _ms(c99):>10}"
                f"{'' if cpu is None else f'{cpu:.2f} ms':>10}"
                f"{'' if fixed is None else f'{fixed:.2f} ms':>10}  {t['limited_by']}"
            )
    at70 = report.get("tap_at_70pct")
    if at70:
        lines.append(
            f"tap at 70 % ({at70['rate']}/s): p99 {_ms(at70['p99_ms'])}, 5xx "
            f"{at70['server_errors']}, 202→bet_confirmed p50 {_ms(at70.get('confirm_p50_ms'))} "
            f"p99 {_ms(at70.get('confirm_p99_ms'))}, server CPU "
            f"{at70.get('server_cpu_ms_per_bet')} ms/bet (idle server: "
            f"{report.get('tap_idle_server_cpu_pct') or 0:.0f} % of a core)"
        )
    for key, value in report.get("ratios", {}).items():
        lines.append(f"ratio {key}: {value if value is not None else 'n/a'}")
    for key, value in report.get("cpu_ratios", {}).items():
        lines.append(f"server CPU per request, {key}: {value if value is not None else 'n/a'}")
    return lines


def _format_rest(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key in ("tap_skipped", "skipped"):
        if key in report:
            last = str(report[key]).strip().splitlines()[-1]
            lines.append(f"skipped: {last} (details in the JSON report)")
    if report["bench"] == "fanout" and "tick_to_client" in report:
        lat = report["tick_to_client"]
        lines.append(
            f"fanout to {report.get('connected')} clients: tick→client p50 {lat['p50_ms']} ms "
            f"p99 {lat['p99_ms']} ms max {lat['max_ms']} ms, {report['frames_per_s']} frames/s"
        )
    if report["bench"] == "client":
        lines.append(
            f"h1 {report['h1_cpu_us_per_request']} µs vs httpx "
            f"{report['httpx_cpu_us_per_request']} µs CPU per request"
        )
    if report["bench"].startswith("bench_"):
        result = report.get("result", report.get("skipped"))
        if isinstance(result, dict):
            lines += [f"  {k}: {v}" for k, v in result.items()]
        else:
            lines.append(f"  {result}")
    return lines
