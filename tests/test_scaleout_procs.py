"""Scale-out with real processes (issue 11): one `tap serve --role core`, two `--role edge`, one
Redis, one SQLite file (tests/scaleout.py). Each edge listens on a port of its own, so a request
goes to the edge the test means.

What is pinned, as the issue says it:
- a player logged in on edge A bets on edge B → 202, and hears `bet_confirmed` on its WebSocket
  on A;
- one nonce sent 100 times at once, half to each edge → exactly one bet;
- a player funded for 7 stakes sends 200 bets at once over both edges → exactly 7 confirmed;
- restarting an edge logs nobody out, and every bet resolves exactly once (one resolution row,
  one `bet_resolved` frame);
- `tap serve --edges 2` itself: one public port, bets through it, an edge SIGKILLed and started
  again by the supervisor without logging anyone out, SIGTERM stops all with exit code 0;
and after each, `tap check` reconciles the ledger. The faults (an edge or the core SIGKILLed)
are in tests/test_scaleout_faults.py.

Every wait is bounded by `trio.fail_after`; nothing asserts on timing.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from tap.edge.desk import bet_id_for
from tests.e2e import WsClient
from tests.procs import Client, ServerProcess, ledger_bets, server_env, tap_check
from tests.redis_fixtures import redis_prefix, redis_url
from tests.scaleout import (
    SETTLE_WITHIN_S,
    STAKE,
    cluster,
    code_of,
    free_port,
    placeable_everywhere,
    post_together,
    same_session,
    wait_resolved,
)

__all__ = ["redis_prefix", "redis_url"]

pytestmark = [pytest.mark.slow, pytest.mark.redis]

# A flood of bets on a shared 2-core machine can stall an edge's event loop past the defaults'
# 1 s (an edge then takes the core for silent, or Redis for down, and answers 503): the flood
# tests are about money and nonces, so they give both a margin.
PATIENT = {"TAP__BUS__CORE_SILENCE_MS": "5000", "TAP__REDIS__REQUEST_TIMEOUT_MS": "5000"}


async def test_a_bet_placed_on_one_edge_is_confirmed_on_the_websocket_held_on_the_other(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with cluster(tmp_path, redis_url, redis_prefix) as c, c.http(0) as a, c.http(1) as b:
        on_a = Client(a)
        await on_a.login()  # the only login: its session is valid on every edge
        await on_a.deposit(10 * STAKE)
        on_b = same_session(on_a, b)
        async with trio_websocket.open_websocket_url(c.ws_url(0)) as raw:
            ws = WsClient(raw)
            await ws.auth(on_a.headers["Authorization"].removeprefix("Bearer "))
            await ws.subscribe("account")
            (cell,) = await placeable_everywhere((a, b), 1)
            r = await b.post(
                "/api/bets",
                json=on_b.bet(cell, STAKE, int(time.time() * 1000)),
                headers=on_b.headers,
            )
            assert r.status_code == 202, r.text
            bet_id = r.json()["bet_id"]
            frame = await ws.next_of_type(
                "bet_confirmed",
                within=SETTLE_WITHIN_S,
                where=lambda f: f["bet"]["bet_id"] == bet_id,
            )
            assert frame["balance"] == {"available": 9 * STAKE, "locked": STAKE}
        r = await a.get(f"/api/bets/{bet_id}", headers=on_a.headers)
        assert r.status_code == 200 and r.json()["status"] == "confirmed", r.text
    assert c.bets_of(on_a.address) == {bet_id: "confirmed"}
    await c.check_ledger()


async def test_one_nonce_sent_100_times_over_two_edges_makes_exactly_one_bet(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with (
        cluster(tmp_path, redis_url, redis_prefix, **PATIENT) as c,
        c.http(0) as a,
        c.http(1) as b,
    ):
        on_a = Client(a)
        await on_a.login()
        await on_a.deposit(10 * STAKE)
        on_b = same_session(on_a, b)
        (cell,) = await placeable_everywhere((a, b), 1)
        nonce = "same-nonce-" + on_a.address[2:14]
        now = int(time.time() * 1000)
        sends = [
            (client, client.bet(cell, STAKE, now, nonce=nonce))
            for _ in range(50)
            for client in (on_a, on_b)
        ]
        answers = await post_together(sends)
        codes = [code_of(r) for r in answers]
        assert codes.count("202") == 1, sorted(set(codes))
        assert set(codes) == {"202", "replayed_nonce"}, sorted(set(codes))
        (winner,) = [r.json() for r in answers if r.status_code == 202]
        assert winner["bet_id"] == bet_id_for(on_a.address, nonce)
    assert c.bets_of(on_a.address) == {winner["bet_id"]: "confirmed"}
    assert c.available(on_a.address) == 9 * STAKE
    await c.check_ledger()


async def test_funds_for_7_stakes_and_200_bets_at_once_over_two_edges_confirm_exactly_7(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    k = 7
    # 200 distinct cells: a player bets once per cell, so the grid has 32 rows here.
    async with (
        cluster(tmp_path, redis_url, redis_prefix, TAP__MARKETS__0__ROWS="32", **PATIENT) as c,
        c.http(0) as a,
        c.http(1) as b,
    ):
        on_a = Client(a)
        await on_a.login()
        await on_a.deposit(k * STAKE)
        on_b = same_session(on_a, b)
        cells = await placeable_everywhere((a, b), 200, lead_ms=8000)
        now = int(time.time() * 1000)
        sends = [
            (client, client.bet(cell, STAKE, now))
            for client, cell in zip([on_a, on_b] * 100, cells, strict=True)
        ]
        answers = await post_together(sends)
        codes = [code_of(r) for r in answers]
        # Accepted (202), or refused for money: at admission on the shared hot balance, or
        # by the core's writer (the ledger's own check). On a busy machine a few of the 200
        # arrive after their column locked (cell_not_placeable), which takes nothing away.
        allowed = {"202", "insufficient_funds", "cell_not_placeable"}
        assert set(codes) <= allowed, sorted(Counter(codes).items())
        accepted = {r.json()["bet_id"] for r in answers if r.status_code == 202}
    bets = c.bets_of(on_a.address)
    confirmed = {bet_id for bet_id, status in bets.items() if status == "confirmed"}
    assert len(confirmed) == k, bets
    assert accepted == confirmed
    assert c.available(on_a.address) == 0
    await c.check_ledger()


async def test_restarting_an_edge_logs_nobody_out_and_every_bet_resolves_exactly_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # Short columns, so that the bets resolve within the test: 1 s columns, 12 ahead.
    fast = {"TAP__MARKETS__0__COLUMN_MS": "1000"}
    async with (
        cluster(tmp_path, redis_url, redis_prefix, **fast) as c,
        c.http(0) as a,
        c.http(1) as b,
    ):
        on_a = Client(a)
        await on_a.login()
        await on_a.deposit(20 * STAKE)
        on_b = same_session(on_a, b)
        async with trio_websocket.open_websocket_url(c.ws_url(1)) as raw:
            ws = WsClient(raw)
            await ws.auth(on_a.headers["Authorization"].removeprefix("Bearer "))
            await ws.subscribe("account")
            cells = await placeable_everywhere((a, b), 6, lead_ms=3000)
            now = int(time.time() * 1000)
            answers = await post_together(
                [
                    (client, client.bet(cell, STAKE, now))
                    for client, cell in zip([on_a, on_b] * 3, cells, strict=True)
                ]
            )
            assert [r.status_code for r in answers] == [202] * 6, [r.text for r in answers]
            bet_ids = [r.json()["bet_id"] for r in answers]

            # Edge A restarts: the session it issued is still good, on it and on B.
            assert await c.stop(c.edges[0], signal.SIGTERM) == 0
            await c.start_edge(0)
            for client in (on_a, on_b):
                r = await client.http.get("/api/balance", headers=client.headers)
                assert r.status_code == 200, r.text

            await wait_resolved(on_b, bet_ids)
            resolved = [
                (await ws.next_of_type("bet_resolved", within=SETTLE_WITHIN_S))["bet"]
                for _ in bet_ids
            ]
            await ws.ping()  # anything more would have come before this answer
            extra = ws.frames_of(["bet_resolved"])
        assert sorted(f["bet_id"] for f in resolved) == sorted(bet_ids)
        assert extra == []  # one `bet_resolved` per bet, no second one
    bets = c.bets_of(on_a.address)
    assert set(bets) == set(bet_ids)
    assert set(bets.values()) <= {"won", "lost", "void"}, bets
    rows = c.ledger_rows_per_bet(bet_ids)
    for bet_id in bet_ids:
        resolution = "refund" if bets[bet_id] == "void" else "payout"
        assert rows[bet_id] == ["stake", resolution], (bet_id, rows[bet_id])
    await c.check_ledger()


def _children(pid: int) -> set[int]:
    """The child processes of `pid`, whichever of its threads started them."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _edges_ready(log: Path) -> int:
    """How many times the supervisor said an edge was ready (its log)."""
    return log.read_text().count('"msg": "child ready", "child": "edge-')


def _role_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return argv[argv.index("--role") + 1]


async def test_tap_serve_edges_2_serves_one_port_and_restarts_a_killed_edge(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    env = server_env(
        tmp_path,
        TAP__REDIS__URL=f'"{redis_url}"',
        TAP__REDIS__PREFIX=f'"{redis_prefix}"',
        TAP__SERVER__PORT=str(free_port()),
    )
    fleet = ServerProcess(
        env, log_path=tmp_path / "fleet.log", args=["--edges", "2", "--core-port", "0"]
    )
    async with trio.open_nursery() as nursery:
        await fleet.start(nursery)
        assert fleet.proc is not None
        children = _children(fleet.proc.pid)
        assert sorted(_role_of(pid) for pid in children) == ["core", "edge", "edge"]
        # Several connections to the one port: the kernel spreads them over both edges.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=fleet.url, timeout=15, limits=limits) as http:
            player = Client(http)
            await player.login()
            await player.deposit(10 * STAKE)
            cells = await placeable_everywhere((http,), 4)
            now = int(time.time() * 1000)
            answers = await post_together(
                [(player, player.bet(cell, STAKE, now)) for cell in cells]
            )
            assert [r.status_code for r in answers] == [202] * 4, [r.text for r in answers]

            edge = next(pid for pid in children if _role_of(pid) == "edge")
            os.kill(edge, signal.SIGKILL)
            with trio.fail_after(SETTLE_WITHIN_S * 2):  # the supervisor starts another one
                while True:
                    now = _children(fleet.proc.pid)  # the killed one, until it is reaped
                    if edge not in now and len(now - children) == 1:
                        break
                    await trio.sleep(0.1)
            assert _role_of((now - children).pop()) == "edge"
            with trio.fail_after(SETTLE_WITHIN_S * 2):  # and says when it is ready
                while _edges_ready(tmp_path / "fleet.log") < 3:  # noqa: ASYNC110 - a log
                    await trio.sleep(0.1)
            for _ in range(8):  # whichever edge answers, the session is good
                r = await http.get("/api/balance", headers=player.headers)
                assert r.status_code == 200, r.text
                balance = r.json()
                assert (balance["available"], balance["locked"]) == (6 * STAKE, 4 * STAKE)
        fleet.signal(signal.SIGTERM)
        assert await fleet.wait() == 0, fleet.log_tail()
        nursery.cancel_scope.cancel()
    assert _children(fleet.proc.pid) == set()
    bets = ledger_bets(tmp_path / "tap.db")
    assert sorted(bets.values()) == ["confirmed"] * 4
    check = await trio.to_thread.run_sync(tap_check, env)
    assert check.returncode == 0, check.stdout + check.stderr
