"""A core and its edges as real processes, on one Redis and one SQLite file (not a test module).

`cluster` starts what `tap serve --edges N` starts — `tap serve --role core` and N × `tap serve
--role edge` — but each edge on a port of its own, so a test can send a request to the edge it
means (behind the one SO_REUSEPORT port the kernel would pick). The price feed is a standalone
simulator in the test's nursery: the core ingests it, and keeps ingesting the same path when it
is killed and started again. `Cluster` starts, stops and kills any member and reads the ledger
file directly for the test's verdicts.

On a clean exit the edges get SIGTERM and must exit 0, then the core; when the body raises, the
nursery's cancellation kills everything.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis
import trio

from actors.feed_sim import serve_feed_sim
from tests.procs import Client, ServerProcess, server_env, tap_check

FEED_TICK_MS = 100
# A calm price path (σ 5 %/year moves ~1 USD a second, a tenth of a row): cells picked a few
# seconds before the bets are still in the edges' published grids when the bets land.
FEED_SIGMA = 0.05
FEED_START_PRICE = 10_000_040  # increments: 100000.40 USD
STAKE = 1_000_000
LEAD_MS = 15_000  # cells start at least three 5 s columns ahead: far from the lockout column
FLOOD_WITHIN_S = 30  # 200 requests on a busy 2-core machine; a bound, not a measurement
SETTLE_WITHIN_S = 15
RESOLVE_WITHIN_S = 60  # the latest column a test bets on closes well within this


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    tmp_path: Path
    env: dict[str, str]
    nursery: trio.Nursery
    redis: redis.Redis
    prefix: str
    core_port: int = field(default_factory=free_port)
    edge_ports: list[int] = field(default_factory=list)
    core: ServerProcess | None = None
    edges: list[ServerProcess | None] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.tmp_path / "tap.db"

    def edge_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.edge_ports[i]}"

    def ws_url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.edge_ports[i]}/ws"

    def http(self, i: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.edge_url(i), timeout=15)

    async def start_core(self) -> None:
        core = ServerProcess(
            self.env,
            log_path=self.tmp_path / "core.log",
            args=["--role", "core", "--port", str(self.core_port)],
            ready="serving",
        )
        await core.start(self.nursery)
        self.core = core

    async def start_edge(self, i: int) -> None:
        edge = ServerProcess(
            self.env,
            log_path=self.tmp_path / f"edge-{i}.log",
            args=["--role", "edge", "--port", str(self.edge_ports[i])],
        )
        await edge.start(self.nursery)
        self.edges[i] = edge

    async def stop(self, server: ServerProcess | None, signum: int = signal.SIGTERM) -> int:
        """Signal `server` and wait for it to exit; its exit code."""
        assert server is not None
        server.signal(signum)
        return await server.wait()

    def log_tails(self) -> str:
        servers = [self.core, *self.edges]
        return "".join(s.log_tail() for s in servers if s is not None)

    # ── the ledger file, read directly ──

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db_path)) as conn:
            return conn.execute(sql, params).fetchall()

    def bets_of(self, address: str) -> dict[str, str]:
        """bet_id → status of every bet `address` has in the ledger."""
        return dict(self.query("SELECT bet_id, status FROM bets WHERE address = ?", address))

    def ledger_rows_per_bet(self, bet_ids: list[str]) -> dict[str, list[str]]:
        """bet_id → the kinds of the ledger entries that name it (its stake, its resolution)."""
        rows: dict[str, list[str]] = {b: [] for b in bet_ids}
        for ref, kind in self.query("SELECT ref, kind FROM ledger ORDER BY entry_id"):
            if ref in rows:
                rows[ref].append(kind)
        return rows

    def hot_balance(self, address: str) -> int | None:
        """Redis's spendable balance for `address` (key layout: `tap/store/redis_hot.py`)."""
        value = self.redis.hget(f"{self.prefix}:{{{address}}}:bal", "v")
        return None if value is None else int(value)

    def bets_by_id(self, bet_ids: list[str]) -> dict[str, str]:
        """bet_id → status, for those of `bet_ids` the ledger holds."""
        marks = ",".join("?" * len(bet_ids))
        sql = f"SELECT bet_id, status FROM bets WHERE bet_id IN ({marks})"
        return dict(self.query(sql, *bet_ids)) if bet_ids else {}

    def available(self, address: str) -> int:
        row = self.query("SELECT available FROM accounts WHERE address = ?", address)
        return int(row[0][0]) if row else 0

    async def check_ledger(self) -> None:
        check = await trio.to_thread.run_sync(tap_check, self.env)
        assert check.returncode == 0, check.stdout + check.stderr


@asynccontextmanager
async def cluster(
    tmp_path: Path, url: str, prefix: str, *, edges: int = 2, **overrides: str
) -> AsyncIterator[Cluster]:
    """A feed simulator, a core, and `edges` edges on ports of their own (see the module
    docstring). `overrides`: more `TAP__…` variables for every member."""
    async with trio.open_nursery() as nursery:
        feed_port = await nursery.start(
            partial(
                serve_feed_sim,
                "127.0.0.1",
                0,
                seed=7,
                sigma=FEED_SIGMA,
                tick_ms=FEED_TICK_MS,
                start_price=FEED_START_PRICE,
            )
        )
        env = server_env(
            tmp_path,
            TAP__FEED__SOURCE='"ws-sim"',
            TAP__FEED__URL=f'"ws://127.0.0.1:{feed_port}/"',
            TAP__REDIS__URL=f'"{url}"',
            TAP__REDIS__PREFIX=f'"{prefix}"',
            # The feed runs in the test's process: on a loaded machine its ticks can arrive
            # over a second late, and the breaker would rightly refuse bets (late_feed). These
            # tests pin money and processes, not the breaker (tests/test_breaker.py).
            TAP__BREAKER__MAX_TICK_AGE_MS="10000",
            **overrides,
        )
        client = redis.Redis.from_url(url, socket_timeout=5)
        the = Cluster(tmp_path, env, nursery, client, prefix)
        the.edge_ports = [free_port() for _ in range(edges)]
        the.edges = [None] * edges
        try:
            await the.start_core()
            async with trio.open_nursery() as starting:
                for i in range(edges):
                    starting.start_soon(the.start_edge, i)
            yield the
            for server in [*the.edges, the.core]:  # edges first: they hand bets to the core
                if server is not None and server.proc and server.proc.returncode is None:
                    assert await the.stop(server) == 0, server.log_tail()
        finally:
            client.close()
        nursery.cancel_scope.cancel()  # the feed simulator


# ── players on several edges ─────────────────────────────────────────────────────────────────


def same_session(client: Client, http: httpx.AsyncClient) -> Client:
    """`client`'s session (token and session key), used through another edge."""
    other = Client(http, wallet=client.wallet)
    other.key, other.headers, other.chain_id = client.key, client.headers, client.chain_id
    return other


async def grid(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/api/grid/BTC-USD")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def placeable_everywhere(
    https: tuple[httpx.AsyncClient, ...], count: int, *, lead_ms: int = LEAD_MS
) -> list[str]:
    """`count` cells placeable on every edge, starting at least `lead_ms` ahead, nearest the
    price first (the rows least likely to leave the published grid while the bets travel)."""
    with trio.fail_after(SETTLE_WITHIN_S):
        while True:
            grids = [await grid(http) for http in https]
            cutoff = max(g["as_of"] for g in grids) + lead_ms
            price = grids[0]["price"]
            common = set.intersection(
                *(
                    {c["cell_id"] for c in g["cells"] if c["placeable"] and c["t_start"] >= cutoff}
                    for g in grids
                )
            )
            bands = {c["cell_id"]: c for c in grids[0]["cells"]}
            if len(common) >= count:
                break
            await trio.sleep(0.2)  # a breaker still closing, a first quote still missing
    ranked = sorted(
        common, key=lambda c: (abs(bands[c]["price_lo"] + bands[c]["price_hi"] - 2 * price), c)
    )
    return ranked[:count]


async def post_together(
    sends: list[tuple[Client, dict[str, Any]]], extra_headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """POST every (session, body) to /api/bets at once (every body signed beforehand, every
    task started in the same scheduling round); the answers in the same order."""
    answers: list[httpx.Response | None] = [None] * len(sends)

    async def one(i: int, client: Client, body: dict[str, Any]) -> None:
        answers[i] = await client.http.post(
            "/api/bets", json=body, headers=client.headers | (extra_headers or {})
        )

    with trio.fail_after(FLOOD_WITHIN_S):
        async with trio.open_nursery() as nursery:
            for i, (client, body) in enumerate(sends):
                nursery.start_soon(one, i, client, body)
    return [r for r in answers if r is not None]


def code_of(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"]) if r.status_code >= 400 else str(r.status_code)


async def wait_resolved(client: Client, bet_ids: list[str]) -> None:
    """Until every bet in `bet_ids` is won, lost or void (read over HTTP)."""
    with trio.fail_after(RESOLVE_WITHIN_S):
        for bet_id in bet_ids:
            while True:
                r = await client.http.get(f"/api/bets/{bet_id}", headers=client.headers)
                if r.status_code == 200 and r.json()["status"] in ("won", "lost", "void"):
                    break
                await trio.sleep(0.2)


# ── load, and what it was answered ───────────────────────────────────────────────────────────


@dataclass
class Answer:
    edge: int
    address: str
    nonce: str
    code: str  # "202", "201", an error code, or "transport" (no answer: the edge died)
    bet_id: str | None  # from the answer, when it named one


async def login_on_each(https: list[httpx.AsyncClient]) -> list[Client]:
    """One player with a session of its own on each edge (the fault tests do not depend on
    sessions being shared)."""
    first = Client(https[0])
    sessions = [first] + [Client(http, wallet=first.wallet) for http in https[1:]]
    for client in sessions:
        await client.login()
    return sessions


async def bet_loop(
    sessions: list[Client], answers: list[Answer], stop: trio.Event, *, pause_s: float = 0.02
) -> None:
    """One player betting until `stop`: one bet at a time, on each edge in turn, each on a cell
    of its own from the newest grid any edge answers with; every answer goes into `answers`."""
    used: set[str] = set()
    cells: list[str] = []
    turn = 0
    while not stop.is_set():
        if not cells or turn % 8 == 0:  # a newer grid now and then: cells drift to the lockout
            cells = [c for c in await _fresh_cells(sessions) if c not in used]
            if not cells:
                await trio.sleep(0.2)
                continue
        cell = cells.pop(0)
        used.add(cell)
        edge = turn % len(sessions)
        turn += 1
        await place_one(sessions[edge], edge, cell, answers)
        await trio.sleep(pause_s)


async def place_one(client: Client, edge: int, cell: str, answers: list[Answer]) -> Answer:
    """One bet of `client` on `cell` through `edge`; its answer, also appended to `answers`."""
    body = client.bet(cell, STAKE, int(time.time() * 1000))
    try:
        r = await client.http.post("/api/bets", json=body, headers=client.headers)
    except httpx.TransportError:
        answer = Answer(edge, client.address, body["nonce"], "transport", None)
    else:
        payload = r.json()
        bet_id = payload.get("bet_id") or payload.get("error", {}).get("bet_id")
        answer = Answer(edge, client.address, body["nonce"], code_of(r), bet_id)
    answers.append(answer)
    return answer


async def probe_until(
    sessions: list[Client],
    answers: list[Answer],
    codes: set[str],
    within_s: float,
    used: set[str],
) -> None:
    """Send a fresh bet to every edge every 100 ms, each without waiting for the ones before
    (a bet the edge handed to a dead core waits for its answer), until each edge has answered
    one with a code in `codes`; fails after `within_s`. `used`: the cells this player has bet
    on (a player bets once per cell), updated."""
    seen: set[int] = set()

    async def one(edge: int, cell: str) -> None:
        if (await place_one(sessions[edge], edge, cell, answers)).code in codes:
            seen.add(edge)

    with trio.fail_after(within_s):
        async with trio.open_nursery() as nursery:
            while len(seen) < len(sessions):
                fresh = await _fresh_cells(sessions, placeable=False)
                cells = [c for c in fresh if c not in used]
                for edge in range(len(sessions)):
                    if edge not in seen and cells:
                        used.add(cells[0])
                        nursery.start_soon(one, edge, cells.pop(0))
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()  # the bets still waiting are not the question


async def _fresh_cells(sessions: list[Client], *, placeable: bool = True) -> list[str]:
    """Cells at least `LEAD_MS` ahead in the newest grid any edge answers with, nearest the
    price first; placeable ones only, unless `placeable` is False (with its breaker open an edge
    publishes no placeable cell, and a probe of its refusal still needs cells to name)."""
    for client in sessions:
        try:
            r = await client.http.get("/api/grid/BTC-USD")
        except httpx.TransportError:
            continue
        if r.status_code != 200:
            continue
        g = r.json()
        cutoff = g["as_of"] + LEAD_MS
        price = g["price"]
        cells = [
            c for c in g["cells"] if (c["placeable"] or not placeable) and c["t_start"] >= cutoff
        ]
        cells.sort(
            key=lambda c: (not c["placeable"], abs(c["price_lo"] + c["price_hi"] - 2 * price))
        )
        return [c["cell_id"] for c in cells]
    return []


async def wait_answers(answers: list[Answer], count: int) -> None:
    with trio.fail_after(FLOOD_WITHIN_S):
        while len(answers) < count:  # noqa: ASYNC110 - the load tasks append
            await trio.sleep(0.05)
