"""Real `tap serve` processes and the players that talk to them over HTTP (not a test module).

`server_env` is the environment a test server runs with (`TAP__…` overrides on the embedded
defaults: a database, archive and backups under the test's directory, a quick breaker, no rate limit
to speak of, mock deposits); `ServerProcess` starts `python -m tap.runtime.cli serve` in a nursery
and returns once it announced its URL and `/healthz` says `pass` (bets are taken). `Client` is one
wallet's session on one server: SIWE login with an Ed25519 session key, mock deposits, signed bets.
Two clients may share one wallet (`wallet=`), one session per server. (A session is valid on every
process of a deployment — tests/test_e2e_sessions.py — so one login would do; a session per
server keeps each client independent of the other.)

Every wait is bounded by `trio.fail_after`; nothing sleeps to let time pass except the short
polls for readiness.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import httpx
import trio
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from nacl.signing import SigningKey

from tap import siwe
from tap.admission import bet_payload

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"tap is serving on (http://\S+)")
START_WITHIN_S = 30  # an interpreter start-up, migration and first ticks on a busy 2-core machine
READY_WITHIN_S = 20


def server_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """This process's environment without its `TAP__…`, plus the test server's; `overrides` are
    more `TAP__…` names with their TOML values (`TAP__REDIS__URL='"redis://…"'`)."""
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
    env.update(overrides)
    return env


async def _kill(process: trio.Process) -> None:
    """Cancellation (a failed test's teardown) kills at once: nothing is left to drain."""
    process.kill()
    await process.wait()


class ServerProcess:
    """One `tap serve` subprocess. `log_path`: where its stderr (the server's log) goes; `args`:
    more `serve` options (`--role core`, `--port P`); `ready`: what `start` waits for, "bets"
    (/healthz `pass`: the breaker closed) or "serving" (/readyz 200, for a core's ops port)."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        log_path: Path | None = None,
        args: Sequence[str] = (),
        ready: Literal["bets", "serving"] = "bets",
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.args = list(args)
        self.ready = ready
        self.proc: trio.Process | None = None
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> None:
        """Start it in `nursery` (cancelling the nursery kills it); return once it is ready."""
        log: IO[bytes] | None = None
        if self.log_path is not None:
            log = self.log_path.open("ab")
        try:
            self.proc = await nursery.start(
                lambda task_status: trio.run_process(  # noqa: ASYNC105 - nursery.start awaits it
                    [sys.executable, "-m", "tap.runtime.cli", "serve", *self.args],
                    env=self.env,
                    cwd=str(ROOT),
                    stdout=subprocess.PIPE,
                    stderr=log if log is not None else subprocess.DEVNULL,
                    check=False,
                    deliver_cancel=_kill,
                    task_status=task_status,
                )
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own copy of the descriptor
        assert self.proc.stdout is not None
        buf = b""
        with trio.fail_after(START_WITHIN_S):
            while not (m := SERVING.search(buf.decode(errors="replace"))):
                chunk = await self.proc.stdout.receive_some(4096)
                assert chunk, f"server exited before serving: {buf!r}{self.log_tail()}"
                buf += chunk
        self.url = m.group(1)
        # Ready for bets: /healthz `pass` (breaker closed), more than /readyz's "serving". A
        # probe that times out (a busy machine, a process still warming up) is asked again.
        path = "/readyz" if self.ready == "serving" else "/healthz"
        async with httpx.AsyncClient(base_url=self.url) as c:
            with trio.fail_after(READY_WITHIN_S):
                while True:
                    try:
                        r = await c.get(path)
                    except httpx.TimeoutException:
                        continue
                    if r.status_code == 200 and (path == "/readyz" or r.json()["status"] == "pass"):
                        return
                    await trio.sleep(0.1)

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n--- server log ---\n" + self.log_path.read_text(errors="replace")[-3000:]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self) -> int:
        assert self.proc is not None
        with trio.fail_after(20):
            return await self.proc.wait()


class Client:
    """A player's session on one server: wallet login (SIWE) with its own Ed25519 session key,
    deposits, signed bets. Pass another client's `wallet` to log the same player in elsewhere."""

    def __init__(self, http: httpx.AsyncClient, *, wallet: LocalAccount | None = None) -> None:
        self.http = http
        self.wallet: LocalAccount = wallet if wallet is not None else Account.create()
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

    def bet(
        self, cell_id: str, amount: int, now_ms: int, *, nonce: str | None = None
    ) -> dict[str, Any]:
        """A `POST /api/bets` body signed by this session's key (a fresh nonce unless given)."""
        nonce = nonce or secrets.token_hex(12)
        payload = bet_payload(self.chain_id, self.address, cell_id, amount, nonce, now_ms, 0)
        return {
            "cell_id": cell_id,
            "amount": amount,
            "nonce": nonce,
            "timestamp": now_ms,
            "chain_id": self.chain_id,
            "signature": self.key.sign(payload).signature.hex(),
        }


def ledger_bets(db_path: Path) -> dict[str, str]:
    """Every bet in the ledger file: bet_id → status."""
    conn = sqlite3.connect(db_path)
    try:
        return dict(conn.execute("SELECT bet_id, status FROM bets").fetchall())
    finally:
        conn.close()


def tap_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`tap check` (the ledger's integrity check) on the database `env` names."""
    return subprocess.run(
        [sys.executable, "-m", "tap.runtime.cli", "check"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
