"""No confirmed bet is lost by a crash, and no accepted bet is silently lost by a shutdown.

The server runs as a real `tap serve` subprocess on a real SQLite file. Players flood it with
signed bets over HTTP; then the process is killed with SIGKILL at a random moment (several
times, restarting on the same file), or stopped with SIGTERM mid-flood. Afterwards the ledger is
read directly and with `tap check`:
- SIGKILL: every bet answered `201 confirmed` (Prefer: wait) is in the ledger, never rejected, and
  the integrity check passes;
- SIGTERM: every bet answered `202` is in the ledger — confirmed (or since resolved) or explicitly
  rejected — none missing; the process exits 0.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

from tap import siwe
from tap.admission import bet_payload

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"tap is serving on (http://\S+)")


def server_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP__")}
    env.update(
        {
            "TAP__SERVER__PORT": "0",
            "TAP__SERVER__DB_PATH": f'"{tmp_path / "tap.db"}"',
            "TAP__SERVER__GRACEFUL_TIMEOUT_S": "2.0",
            "TAP__ARCHIVE__DIR": f'"{tmp_path / "archive"}"',
            "TAP__ARCHIVE__BACKUP_DIR": f'"{tmp_path / "backups"}"',
            "TAP__FEED__SIM_TICK_MS": "50",
            "TAP__BREAKER__HYSTERESIS_MS": "300",
            "TAP__LIMITS__RATE_PER_S": "10000.0",
            "TAP__LIMITS__BURST": "10000",
            "TAP__PAYMENTS__MOCK_DEPOSITS": "true",
        }
    )
    return env


class ServerProcess:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.proc: trio.Process | None = None
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> None:
        self.proc = await nursery.start(
            lambda task_status: trio.run_process(  # noqa: ASYNC105 - nursery.start awaits it
                [sys.executable, "-m", "tap.runtime.cli", "serve"],
                env=server_env(self.tmp_path),
                cwd=str(ROOT),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                task_status=task_status,
            )
        )
        assert self.proc.stdout is not None
        buf = b""
        with trio.fail_after(30):
            while not (m := SERVING.search(buf.decode(errors="replace"))):
                chunk = await self.proc.stdout.receive_some(4096)
                assert chunk, f"server exited before serving: {buf!r}"
                buf += chunk
        self.url = m.group(1)
        async with httpx.AsyncClient(base_url=self.url) as c:
            with trio.fail_after(20):
                while (await c.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                    await trio.sleep(0.1)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self) -> int:
        assert self.proc is not None
        with trio.fail_after(20):
            return await self.proc.wait()


class Client:
    """A player: wallet login (SIWE) with an Ed25519 session key, deposits, signed bets."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.wallet = Account.create()
        self.address = self.wallet.address.lower()
        self.key = SigningKey.generate()
        self.headers: dict[str, str] = {}
        self.chain_id = 0

    async def login(self) -> None:
        ch = (await self.http.post("/api/auth/challenge", json={"address": self.address})).json()
        self.chain_id = ch["chain_id"]
        text = siwe.login_message(
            domain=ch["domain"],
            address=self.wallet.address,
            uri=ch["uri"],
            chain_id=ch["chain_id"],
            nonce=ch["nonce"],
            issued_at_ms=siwe.iso_to_ms(ch["issued_at"]),
            expiration_ms=siwe.iso_to_ms(ch["expiration_time"]),
            session_key_hex=self.key.verify_key.encode().hex(),
        )
        sig = self.wallet.sign_message(encode_defunct(text=text)).signature.hex()
        r = await self.http.post("/api/auth/login", json={"message": text, "signature": sig})
        assert r.status_code == 200, r.text
        self.headers = {"Authorization": f"Bearer {r.json()['token']}"}

    async def deposit(self, amount: int) -> None:
        r = await self.http.post("/api/deposits", json={"amount": amount}, headers=self.headers)
        assert r.status_code == 201, r.text

    def bet(self, cell_id: str, amount: int, now_ms: int) -> dict[str, Any]:
        nonce = secrets.token_hex(12)
        payload = bet_payload(self.chain_id, self.address, cell_id, amount, nonce, now_ms, 0)
        return {
            "cell_id": cell_id,
            "amount": amount,
            "nonce": nonce,
            "timestamp": now_ms,
            "chain_id": self.chain_id,
            "signature": self.key.sign(payload).signature.hex(),
        }


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


def ledger_bets(db_path: Path) -> dict[str, str]:
    conn = sqlite3.connect(db_path)
    try:
        return dict(conn.execute("SELECT bet_id, status FROM bets").fetchall())
    finally:
        conn.close()


def tap_check(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tap.runtime.cli", "check"],
        env=server_env(tmp_path),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_confirmed_bets_survive_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("TAP_TEST_SEED", "durability"))
    confirmed: set[str] = set()
    for round_no in range(3):
        results: dict[str, set[str]] = {}
        server = ServerProcess(tmp_path)
        async with trio.open_nursery() as nursery:
            await server.start(nursery)

            async def flood_then_nothing(
                server: ServerProcess = server, results: dict[str, set[str]] = results
            ) -> None:
                await flood(server.url, players=3, per_player=60, wait=True, results=results)

            nursery.start_soon(flood_then_nothing)
            await trio.sleep(rng.uniform(0.3, 1.5))
            server.signal(signal.SIGKILL)
            assert await server.wait() == -signal.SIGKILL
            nursery.cancel_scope.cancel()
        confirmed |= results.get("201", set())
        stored = ledger_bets(tmp_path / "tap.db")
        missing = {b for b in confirmed if b not in stored}
        assert not missing, f"round {round_no}: confirmed bets lost: {sorted(missing)[:5]}"
        assert all(stored[b] != "rejected" for b in confirmed)
        check = tap_check(tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
    assert confirmed, "the flood never got a bet confirmed before the kills"

    # A last restart on the same file: the server comes back ready and still reconciles.
    server = ServerProcess(tmp_path)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    assert tap_check(tmp_path).returncode == 0


async def test_sigterm_during_a_flood_answers_every_accepted_bet(tmp_path: Path) -> None:
    results: dict[str, set[str]] = {}
    server = ServerProcess(tmp_path)
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
    assert tap_check(tmp_path).returncode == 0
