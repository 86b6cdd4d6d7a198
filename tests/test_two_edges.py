"""Two `tap serve` processes on one Redis and one SQLite file: nonces and money are shared.

The deployment under test: two full servers share the Redis hot state (nonces, rate buckets, cell
markers, spendable balances) and the ledger file (SQLite serializes their writers), and ingest
the same ticks from one standalone feed simulator (`feed.source = "ws-sim"`), run in the test's
own nursery. A player logs in on each server (one session per server, although either token is
good on both: tests/test_e2e_sessions.py) and signs every request with that session's key.

What is pinned:
- one nonce sent 100 times at once, half to each process → exactly one bet, on either;
- a player funded for k stakes betting 40 times at once over both → exactly k confirmed;
- a deposit made through one process is spendable through the other;
and after each, the hot balance in Redis equals the ledger's available (the hot state never reads
high) and `tap check` reconciles the ledger.

Every wait is bounded by `trio.fail_after`; nothing asserts on timing. Teardown SIGTERMs both
servers (each must drain and exit 0); a failing test kills them and the feed instead.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import trio

from actors.feed_sim import serve_feed_sim
from tap.edge.desk import bet_id_for
from tests.procs import Client, ServerProcess, server_env, tap_check
from tests.redis_fixtures import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]

pytestmark = [pytest.mark.slow, pytest.mark.redis]

STAKE = 1_000_000
FEED_TICK_MS = 100
# A calm price path (σ 5 %/year moves ~1 USD a second, a tenth of a row): the cells picked a few
# seconds before the bets are still inside both processes' published grids when the bets land.
FEED_SIGMA = 0.05
FEED_START_PRICE = 10_000_040  # increments: 100000.40 USD
LEAD_MS = 15_000  # cells start at least three columns ahead: far from the lockout column
FLOOD_WITHIN_S = 20  # 100 requests on a busy 2-core machine; a bound, not a measurement
SETTLE_WITHIN_S = 10


@dataclass
class Edges:
    env: dict[str, str]
    db_path: Path
    servers: tuple[ServerProcess, ServerProcess]
    redis: redis.Redis
    prefix: str

    def hot_balance(self, address: str) -> int | None:
        """Redis's spendable balance for `address` (key layout: `tap/store/redis_hot.py`)."""
        value = self.redis.hget(f"{self.prefix}:{{{address}}}:bal", "v")
        return None if value is None else int(value)

    def ledger_available(self, address: str) -> int:
        with closing(sqlite3.connect(self.db_path)) as conn:
            row = conn.execute(
                "SELECT available FROM accounts WHERE address = ?", (address,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def ledger_bets(self, address: str) -> list[tuple[str, str, str, str | None]]:
        """(bet_id, nonce, status, reason) of every bet `address` has in the ledger."""
        with closing(sqlite3.connect(self.db_path)) as conn:
            return conn.execute(
                "SELECT bet_id, nonce, status, reason FROM bets WHERE address = ?", (address,)
            ).fetchall()


@asynccontextmanager
async def two_edges(tmp_path: Path, url: str, prefix: str) -> AsyncIterator[Edges]:
    """The feed simulator and two servers on it, sharing `url` under `prefix` and one database.

    On a clean exit both servers get SIGTERM and must exit 0 (every accepted bet drained); when
    the body raises, the nursery's cancellation kills both and stops the feed."""
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
            # The feed runs in this test's process: on a loaded machine its ticks can arrive
            # over a second late, and the breaker would rightly refuse bets (late_feed). What
            # is pinned here is the shared money, not the breaker (tests/test_breaker.py).
            TAP__BREAKER__MAX_TICK_AGE_MS="10000",
        )
        a = ServerProcess(env, log_path=tmp_path / "a.log")
        b = ServerProcess(env, log_path=tmp_path / "b.log")
        # Both at once, as two service units would: each migrates the same file (one waits for
        # the other's write lock) and rebuilds the shared hot state from it.
        async with trio.open_nursery() as starting:
            starting.start_soon(a.start, nursery)
            starting.start_soon(b.start, nursery)
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            yield Edges(env, tmp_path / "tap.db", (a, b), client, prefix)
        finally:
            client.close()
        for server in (a, b):
            server.signal(signal.SIGTERM)
        for server in (a, b):
            assert await server.wait() == 0, server.log_tail()
        nursery.cancel_scope.cancel()  # the feed simulator


async def grid(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/api/grid/BTC-USD")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def common_cells(https: tuple[httpx.AsyncClient, httpx.AsyncClient], count: int) -> list[str]:
    """`count` cells placeable on both processes, at least `LEAD_MS` ahead, nearest the price
    first (the rows least likely to leave the published grid while the bets are on their way)."""
    with trio.fail_after(SETTLE_WITHIN_S):
        while True:
            grids = [await grid(http) for http in https]
            cutoff = max(g["as_of"] for g in grids) + LEAD_MS
            price = grids[0]["price"]
            both = set.intersection(
                *(
                    {c["cell_id"] for c in g["cells"] if c["placeable"] and c["t_start"] >= cutoff}
                    for g in grids
                )
            )
            bands = {c["cell_id"]: c for c in grids[0]["cells"]}
            if len(both) >= count:
                break
            await trio.sleep(0.2)  # a breaker still closing, a first quote still missing
    ranked = sorted(
        both,
        key=lambda c: (abs(bands[c]["price_lo"] + bands[c]["price_hi"] - 2 * price), c),
    )
    return ranked[:count]


async def login_everywhere(
    https: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> tuple[Client, Client]:
    """One player, one session (and session key) on each process."""
    on_a = Client(https[0])
    on_b = Client(https[1], wallet=on_a.wallet)
    await on_a.login()
    await on_b.login()
    assert on_a.key.verify_key != on_b.key.verify_key
    return on_a, on_b


async def post_together(
    sends: list[tuple[Client, dict[str, Any]]], extra_headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """POST every (session, body) to /api/bets at once (every body is signed beforehand, every
    task starts in the same scheduling round); the answers in the same order."""
    answers: list[httpx.Response | None] = [None] * len(sends)

    async def one(i: int, client: Client, body: dict[str, Any]) -> None:
        answers[i] = await client.http.post(
            "/api/bets", json=body, headers=client.headers | (extra_headers or {})
        )

    with trio.fail_after(FLOOD_WITHIN_S):
        async with trio.open_nursery() as nursery:
            for i, (client, body) in enumerate(sends):
                nursery.start_soon(one, i, client, body)
    assert all(r is not None for r in answers)
    return [r for r in answers if r is not None]


def code_of(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"]) if r.status_code >= 400 else str(r.status_code)


async def wait_hot_balance(edges: Edges, address: str, expected: int) -> None:
    """Until Redis holds `expected` for `address` (ledger-sync follows each commit shortly);
    fails if it still holds something else after `SETTLE_WITHIN_S`."""
    with trio.move_on_after(SETTLE_WITHIN_S):
        while edges.hot_balance(address) != expected:  # noqa: ASYNC110
            await trio.sleep(0.05)
    hot = edges.hot_balance(address)
    ledger = edges.ledger_available(address)
    assert hot == expected, f"hot balance {hot}, expected {expected} (ledger: {ledger})"


async def wait_confirmed(client: Client, bet_id: str) -> None:
    with trio.fail_after(SETTLE_WITHIN_S):
        while True:
            r = await client.http.get(f"/api/bets/{bet_id}", headers=client.headers)
            if r.status_code == 200 and r.json()["status"] == "confirmed":
                return
            await trio.sleep(0.05)


async def check_ledger(edges: Edges) -> None:
    check = await trio.to_thread.run_sync(tap_check, edges.env)
    assert check.returncode == 0, check.stdout + check.stderr


def http_clients(edges: Edges) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    a, b = edges.servers
    return (
        httpx.AsyncClient(base_url=a.url, timeout=15),
        httpx.AsyncClient(base_url=b.url, timeout=15),
    )


async def test_one_nonce_sent_to_both_processes_makes_exactly_one_bet(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with two_edges(tmp_path, redis_url, redis_prefix) as edges:
        https = http_clients(edges)
        async with https[0], https[1]:
            on_a, on_b = await login_everywhere(https)
            await on_a.deposit(10 * STAKE)
            (cell,) = await common_cells(https, 1)
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
            refused = [r for r in answers if r.status_code == 409]
            assert {r.json()["error"]["bet_id"] for r in refused} == {winner["bet_id"]}

            # Both processes read the one bet from the shared ledger once it is committed.
            with trio.fail_after(SETTLE_WITHIN_S):
                for client in (on_a, on_b):
                    while True:
                        r = await client.http.get(
                            f"/api/bets/by-nonce/{nonce}", headers=client.headers
                        )
                        if r.status_code == 200 and r.json()["status"] == "confirmed":
                            break
                        await trio.sleep(0.05)
                    assert r.json()["bet_id"] == winner["bet_id"]
            await wait_hot_balance(edges, on_a.address, 9 * STAKE)

    bets = edges.ledger_bets(on_a.address)
    assert bets == [(winner["bet_id"], nonce, "confirmed", None)]
    assert edges.ledger_available(on_a.address) == 9 * STAKE
    await check_ledger(edges)


async def test_a_player_funded_for_k_stakes_gets_exactly_k_bets_over_both_processes(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    k = 7
    async with two_edges(tmp_path, redis_url, redis_prefix) as edges:
        https = http_clients(edges)
        async with https[0], https[1]:
            on_a, on_b = await login_everywhere(https)
            await on_a.deposit(k * STAKE)
            cells = await common_cells(https, 40)
            now = int(time.time() * 1000)
            sends = [
                (client, client.bet(cell, STAKE, now))
                for client, cell in zip([on_a, on_b] * 20, cells, strict=True)
            ]
            answers = await post_together(sends, {"Prefer": "wait=5"})

            codes = [code_of(r) for r in answers]
            # 201 confirmed, or 202 if the wait ran out first; the rest were refused for money,
            # at admission (the shared hot balance) or by the writer (the ledger's own check).
            assert set(codes) <= {"201", "202", "insufficient_funds"}, sorted(set(codes))
            accepted = {r.json()["bet_id"] for r in answers if r.status_code in (201, 202)}
            assert len(accepted) <= k
            await wait_hot_balance(edges, on_a.address, 0)

    bets = edges.ledger_bets(on_a.address)
    confirmed = {bet_id for bet_id, _, status, _ in bets if status == "confirmed"}
    assert len(confirmed) == k, bets
    assert accepted == confirmed
    assert all(reason == "insufficient_funds" for _, _, s, reason in bets if s == "rejected")
    assert edges.ledger_available(on_a.address) == 0
    await check_ledger(edges)


async def test_a_deposit_through_one_process_is_spendable_through_the_other(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with two_edges(tmp_path, redis_url, redis_prefix) as edges:
        https = http_clients(edges)
        async with https[0], https[1]:
            on_a, on_b = await login_everywhere(https)
            first, second = await common_cells(https, 2)
            wait = {"Prefer": "wait=5"}

            # No hot balance yet: B seeds it from the ledger, where A's deposit is committed.
            await on_a.deposit(3 * STAKE)
            r = await on_b.http.post(
                "/api/bets",
                json=on_b.bet(first, 3 * STAKE, int(time.time() * 1000)),
                headers=on_b.headers | wait,
            )
            assert r.status_code in (201, 202), r.text
            await wait_hot_balance(edges, on_a.address, 0)

            # The hot balance exists now: A's ledger-sync credits it in Redis, B spends it.
            await on_a.deposit(2 * STAKE)
            await wait_hot_balance(edges, on_a.address, 2 * STAKE)
            r = await on_b.http.post(
                "/api/bets",
                json=on_b.bet(second, 2 * STAKE, int(time.time() * 1000)),
                headers=on_b.headers | wait,
            )
            assert r.status_code in (201, 202), r.text
            await wait_hot_balance(edges, on_a.address, 0)
            await wait_confirmed(on_b, r.json()["bet_id"])
            balance = (await on_b.http.get("/api/balance", headers=on_b.headers)).json()
            assert (balance["available"], balance["locked"]) == (0, 5 * STAKE)

    assert sorted(s for _, _, s, _ in edges.ledger_bets(on_a.address)) == ["confirmed"] * 2
    assert edges.ledger_available(on_a.address) == 0
    await check_ledger(edges)
