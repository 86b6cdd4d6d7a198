"""No confirmed bet is lost by a crash, and no accepted bet is silently lost by a shutdown.

The server runs as a real `tap serve` subprocess on a real SQLite file. Players flood it with
signed bets over HTTP; then the process is killed with SIGKILL at a random point of the flood
(several times, restarting on the same file): after a random number of confirmations has been
observed, plus a random few milliseconds, so every round kills a server that is busy writing,
however fast or slow the machine. Or it is stopped with SIGTERM mid-flood. Afterwards the ledger
is read directly and with `tap check`:
- SIGKILL: every bet answered `201 confirmed` (Prefer: wait) is in the ledger, never rejected, and
  the integrity check passes;
- SIGTERM: every bet answered `202` is in the ledger — confirmed (or since resolved) or explicitly
  rejected — none missing; the process exits 0.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.procs import Client, ServerProcess, ledger_bets, server_env, tap_check

pytestmark = pytest.mark.slow


async def placeable_cells(http: httpx.AsyncClient) -> list[str]:
    grid = (await http.get("/api/grid/BTC-USD")).json()
    # Leave a column of margin: the flood takes a moment and the lockout moves with time.
    cutoff = grid["as_of"] + 2 * 5000
    return [c["cell_id"] for c in grid["cells"] if c["placeable"] and c["t_start"] >= cutoff]


async def flood(
    url: str, *, players: int, per_player: int, wait: bool, results: dict[str, set[str]]
) -> None:
    """Each player bets on distinct cells; records bet ids by the answer they got."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        clients = [Client(http) for _ in range(players)]
        for c in clients:
            await c.login()
            await c.deposit(1_000_000_000)
        cells = await placeable_cells(http)
        headers_extra = {"Prefer": "wait=5"} if wait else {}

        async def one(client: Client, cell_id: str) -> None:
            body = client.bet(cell_id, 1_000_000, int(time.time() * 1000))
            try:
                r = await http.post("/api/bets", json=body, headers=client.headers | headers_extra)
            except httpx.HTTPError:
                return  # the server died mid-request: this bet was never answered
            if r.status_code in (201, 202):
                results.setdefault(str(r.status_code), set()).add(r.json()["bet_id"])

        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(32)
            for client in clients:
                for cell_id in cells[:per_player]:

                    async def go(client: Client = client, cell_id: str = cell_id) -> None:
                        async with limiter:
                            await one(client, cell_id)

                    nursery.start_soon(go)


KILL_AFTER_CONFIRMED = (5, 40)  # each round kills after a random number of 201s in this range
KILL_JITTER_S = 0.05  # …plus up to this much: the kill lands anywhere in a batch's write cycle


async def test_confirmed_bets_survive_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("TAP_TEST_SEED", "durability"))
    confirmed: set[str] = set()
    for round_no in range(3):
        results: dict[str, set[str]] = {}
        kill_after = rng.randint(*KILL_AFTER_CONFIRMED)
        server = ServerProcess(server_env(tmp_path))
        async with trio.open_nursery() as nursery:
            await server.start(nursery)

            async def flood_then_nothing(
                server: ServerProcess = server, results: dict[str, set[str]] = results
            ) -> None:
                await flood(server.url, players=3, per_player=60, wait=True, results=results)

            nursery.start_soon(flood_then_nothing)
            with trio.fail_after(30):  # a bound on a hang, not a timing assertion
                while len(results.get("201", ())) < kill_after:  # noqa: ASYNC110
                    await trio.sleep(0.005)
            await trio.sleep(rng.uniform(0, KILL_JITTER_S))
            before_kill = len(results.get("201", ()))
            server.signal(signal.SIGKILL)
            assert await server.wait() == -signal.SIGKILL
            nursery.cancel_scope.cancel()
        assert before_kill >= kill_after >= 1, f"round {round_no}: killed before any confirmation"
        confirmed |= results.get("201", set())
        stored = ledger_bets(tmp_path / "tap.db")
        missing = {b for b in confirmed if b not in stored}
        assert not missing, f"round {round_no}: confirmed bets lost: {sorted(missing)[:5]}"
        assert all(stored[b] != "rejected" for b in confirmed)
        check = tap_check(server_env(tmp_path))
        assert check.returncode == 0, check.stdout + check.stderr

    # A last restart on the same file: the server comes back ready and still reconciles.
    server = ServerProcess(server_env(tmp_path))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    assert tap_check(server_env(tmp_path)).returncode == 0


async def test_sigterm_during_a_flood_answers_every_accepted_bet(tmp_path: Path) -> None:
    results: dict[str, set[str]] = {}
    server = ServerProcess(server_env(tmp_path))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)

        async def run_flood() -> None:
            await flood(server.url, players=3, per_player=80, wait=False, results=results)

        nursery.start_soon(run_flood)
        with trio.fail_after(30):
            while len(results.get("202", ())) < 50:  # noqa: ASYNC110
                await trio.sleep(0.01)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        nursery.cancel_scope.cancel()
    accepted = results["202"]
    stored = ledger_bets(tmp_path / "tap.db")
    missing = sorted(b for b in accepted if b not in stored)
    assert not missing, f"{len(missing)} bets answered 202 were silently lost: {missing[:5]}"
    assert {stored[b] for b in accepted} <= {"confirmed", "rejected", "won", "lost", "void"}
    assert tap_check(server_env(tmp_path)).returncode == 0
