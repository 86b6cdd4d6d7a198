"""The scale-out roles in one test process: a core and edges joined by real Redis Streams.

`run_server(role="core")` and `run_server(role="edge")` run side by side in the test's nursery
(separate processes are the supervisor's business, tests/test_scaleout_procs.py); each has its
own clock, stop event and Redis connections, and they share only Redis and the SQLite file — as
processes would. The core's feed is manual: the test pushes ticks into the core, and the edges
see them through the bus (their market mirror), which is what `Server.settled_feed` waits for.

What is pinned: the whole bet journey through an edge (202 only after the core committed, the
confirmation and the resolution on the edge's WebSocket, balances); a bet accepted by one edge
is confirmed on the WebSocket a player holds on the other; the core's silence opens every edge's
breaker (503) and its return closes it; a core restarted with requests waiting in the stream
commits them once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tap.config import load_config
from tap.runtime.supervisor import Running, run_server
from tests.e2e import (
    ADMIN_TOKEN,
    START_PRICE,
    TEST_CONFIG,
    Server,
    env_for,
    outside,
    pick_cell,
    wait_until,
)
from tests.redis_fixtures import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]

pytestmark = pytest.mark.redis

STAKE = 1_000_000


@dataclasses.dataclass
class Deployment:
    core: Running
    edges: list[Server]
    nursery: trio.Nursery
    overrides: dict[str, Any]
    tmp_path: Path

    def push(self, price: int, ts: int | None = None) -> None:
        self.edges[0].push(price, ts)
        for edge in self.edges[1:]:
            edge.feed_ts, edge.last_price = self.edges[0].feed_ts, price


async def _start(
    nursery: trio.Nursery, tmp_path: Path, role: str, overrides: dict[str, Any]
) -> tuple[Running, trio.Event]:
    cfg = load_config(str(TEST_CONFIG), environ=env_for(tmp_path, overrides))
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[Running]) -> None:
        try:
            await run_server(
                cfg,
                handle_signals=False,
                admin_token=ADMIN_TOKEN,
                role=role,  # type: ignore[arg-type]
                task_status=task_status,
            )
        finally:
            done.set()

    running: Running = await nursery.start(run)
    return running, done


def breaker_is(edge: Server, state: str) -> bool:
    assert edge.running.services is not None
    return edge.running.services.breaker_state(edge.symbol) == state


async def start_edge(nursery: trio.Nursery, d: Deployment) -> Server:
    running, done = await _start(nursery, d.tmp_path, "edge", d.overrides)
    # The edge has no feed of its own: pushing ticks goes to the core's manual feed.
    running = dataclasses.replace(running, manual_feed=d.core.manual_feed)
    cfg = load_config(str(TEST_CONFIG), environ=env_for(d.tmp_path, d.overrides))
    server = Server(running, cfg, Path(cfg.server.db_path), ADMIN_TOKEN, done)
    if d.edges:
        server.feed_ts = d.edges[0].feed_ts
    return server


@asynccontextmanager
async def deployment(
    tmp_path: Path, redis_url: str, redis_prefix: str, *, edges: int = 1, within: float = 60
) -> AsyncIterator[Deployment]:
    overrides = {
        "redis__url": redis_url,
        "redis__prefix": redis_prefix,
        "server__port": 0,
    }
    with trio.fail_after(within):
        async with trio.open_nursery() as nursery:
            core, _ = await _start(nursery, tmp_path, "core", overrides)
            d = Deployment(core, [], nursery, overrides, tmp_path)
            for _ in range(edges):
                d.edges.append(await start_edge(nursery, d))
            first = d.edges[0]
            first.push(START_PRICE)
            for edge in d.edges:
                edge.feed_ts = first.feed_ts
                await edge.settled_feed()
            await first.set_breaker("closed")
            for edge in d.edges:
                await wait_until(partial(breaker_is, edge, "closed"))
            try:
                yield d
            finally:
                for edge in d.edges:
                    await edge.aclose()
                    edge.running.stop.set()
                d.core.stop.set()


async def test_a_bet_through_an_edge_is_committed_by_the_core_and_resolved(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with deployment(tmp_path, redis_url, redis_prefix) as d:
        edge = d.edges[0]
        player = edge.player()
        await player.login()
        await player.deposit(20 * STAKE)
        async with player.ws() as ws:
            await ws.subscribe("account")
            cell = await pick_cell(edge, min_lead_ms=3000)
            r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
            assert r.status_code == 202, r.text
            bet_id = r.json()["bet_id"]
            frame = await ws.next_of_type(
                "bet_confirmed", where=lambda f: f["bet"]["bet_id"] == bet_id
            )
            assert frame["balance"] == {"available": 19 * STAKE, "locked": STAKE}
            # The edge reads the core's commit from the shared file.
            r = await edge.http().get(f"/api/bets/{bet_id}", headers=player.auth)
            assert r.json()["status"] == "confirmed"
            await edge.walk(cell["t_start"], outside(cell, edge.market.row_height))
            edge.push(cell["price_lo"], cell["t_start"] + 5)
            frame = await ws.next_of_type(
                "bet_resolved", where=lambda f: f["bet"]["bet_id"] == bet_id
            )
            assert frame["bet"]["status"] == "won"
        balance = await player.balance()
        assert balance["locked"] == 0
        assert balance["available"] == 19 * STAKE + frame["bet"]["payout"]
        # The core serves the operations endpoints and nothing a player could call.
        async with httpx.AsyncClient(base_url=d.core.url) as core:
            ready = await core.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {
                "database": "pass",
                "redis": "pass",
                "accepting": "pass",
            }
            assert (await core.get("/healthz")).json()["status"] == "pass"
            assert "tap_bets_total" in (await core.get("/metrics")).text
            assert (await core.get("/api/grid/BTC-USD")).status_code == 404
            assert (await core.post("/readyz")).status_code == 405


async def test_a_bet_accepted_by_one_edge_is_confirmed_on_the_other_edges_websocket(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with deployment(tmp_path, redis_url, redis_prefix, edges=2) as d:
        a, b = d.edges
        player = a.player()
        await player.login()
        await player.deposit(10 * STAKE)
        async with player.ws() as ws_a:
            await ws_a.subscribe("account")
            # The same wallet now talks to edge B (sessions valid on every edge are pinned in
            # the sessions tests; logging in again keeps this test about the bus).
            player.server, player.http = b, b.http()
            await player.login()
            cell = await pick_cell(b, min_lead_ms=3000)
            r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
            assert r.status_code == 202, r.text
            bet_id = r.json()["bet_id"]
            await ws_a.next_of_type("bet_confirmed", where=lambda f: f["bet"]["bet_id"] == bet_id)


async def test_a_silent_core_opens_the_edges_breaker_and_its_return_closes_it(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with deployment(tmp_path, redis_url, redis_prefix) as d:
        edge = d.edges[0]
        player = edge.player()
        await player.login()
        await player.deposit(10 * STAKE)
        cell = await pick_cell(edge, min_lead_ms=5000)
        d.core.stop.set()  # the core goes away (drains and exits)
        await wait_until(partial(breaker_is, edge, "open"))
        health = (await edge.http().get("/healthz")).json()
        assert health["checks"]["core"]["status"] == "warn"
        assert health["checks"]["circuit_breaker"]["reason"] == "core_unreachable"
        r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "breaker_open"
        # A new core on the same file and Redis: the edge follows it and admits again.
        d.core, _ = await _start(d.nursery, tmp_path, "core", d.overrides)
        d.edges[0].running = dataclasses.replace(edge.running, manual_feed=d.core.manual_feed)
        edge.push(START_PRICE)
        await edge.settled_feed()
        await edge.set_breaker("closed")
        cell = await pick_cell(edge, min_lead_ms=3000)
        r = await player.place(cell_id=cell["cell_id"], amount=STAKE)
        assert r.status_code == 202, r.text


async def test_a_websocket_bet_through_an_edge_is_answered_once_after_the_core_committed(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with deployment(tmp_path, redis_url, redis_prefix) as d:
        edge = d.edges[0]
        player = edge.player()
        await player.login()
        await player.deposit(10 * STAKE)
        cell = await pick_cell(edge, min_lead_ms=3000)
        async with player.ws() as ws:
            await ws.subscribe("account")
            body = player.signed_bet(cell["cell_id"], STAKE)
            await ws.send({"type": "place_bet", "req_id": "c1", "ack": "commit", **body})
            confirmed = await ws.next_of_type("bet_confirmed")
            assert confirmed["req_id"] == "c1"
            assert confirmed["bet"]["nonce"] == body["nonce"]
            assert confirmed["balance"] == {"available": 9 * STAKE, "locked": STAKE}
            assert (await ws.ping())["type"] == "pong"
            assert ws.frames_of(["bet_ack", "bet_confirmed", "balance"]) == []
            # A replay through the same edge: refused by the shared hot state before the bus.
            await ws.send({"type": "place_bet", "req_id": "c2", "ack": "commit", **body})
            error = await ws.next_of_type("error", where=lambda f: f["req_id"] == "c2")
            assert error["error"]["code"] == "replayed_nonce"
