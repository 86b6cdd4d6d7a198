"""The naive peer: tap's bet API done the obvious way — one SQLite commit per request.

`bench naive` runs the same bet scenario against this server and against tap, so the win of
tap's batching writer is shown side by side with everything else held equal: the same Quart-trio
and Hypercorn, the same request and WebSocket shapes (API.md: challenge, SIWE login, mock
deposit, grid, `POST /api/bets`, `GET /api/bets/{id}`, WebSocket `auth`/`subscribe`/`place_bet`
with `bet_ack` then `bet_confirmed`), the same Ed25519 check of every bet, and the same
durability (WAL, `synchronous=FULL`: an acknowledged bet is fsync'd).

What makes it naive is deliberate and only this: each bet is its own `BEGIN IMMEDIATE … COMMIT`
on one connection, taken in turn under a lock in a worker thread — no batching, no queue, no
in-memory admission state in front of the database. It is not a second implementation of tap:
there is no resolver, breaker, rate limit or exposure limit, the grid is priced with tap's own
formula but never settled, and it is not meant to be played.

Run: `python -m loadgen.peers.naive --port 9004 --db /tmp/naive.db`.
"""

from __future__ import annotations

import argparse
import math
import random
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import trio

from loadgen.peers.servers import hypercorn_config
from tap.admission import SessionKey, bet_payload
from tap.config import MarketConfig
from tap.messages import BetRequest, ChallengeRequest, DepositRequest, LoginRequest

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    address TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    locked INTEGER NOT NULL CHECK (locked >= 0)
);
CREATE TABLE IF NOT EXISTS bets (
    bet_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    multiplier_bps INTEGER NOT NULL,
    nonce TEXT NOT NULL,
    status TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    signature TEXT NOT NULL,
    UNIQUE (address, nonce),
    UNIQUE (address, cell_id)
);
CREATE TABLE IF NOT EXISTS ledger (
    entry_id INTEGER PRIMARY KEY,
    address TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    ref TEXT NOT NULL UNIQUE,
    at INTEGER NOT NULL
);
"""

SESSION_URN = "urn:tap:session-key:ed25519:"
CHAIN_ID = 31337
SKEW_MS = 30_000
_json = msgspec.json.Encoder()
T = TypeVar("T")


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Ledger:
    """One SQLite connection; every call is one transaction, committed before it returns."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(SCHEMA)
        self.lock = trio.Lock()  # one transaction at a time on the one connection

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        async with self.lock:
            return await trio.to_thread.run_sync(self._transaction, fn)

    def _transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            result = fn(c)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        return result


def deposit_tx(address: str, amount: int, ref: str, at: int) -> Callable[[sqlite3.Connection], int]:
    def tx(c: sqlite3.Connection) -> int:
        c.execute(
            "INSERT INTO accounts (address, available, locked) VALUES (?, ?, 0) "
            "ON CONFLICT (address) DO UPDATE SET available = available + excluded.available",
            (address, amount),
        )
        (available,) = c.execute(
            "SELECT available FROM accounts WHERE address = ?", (address,)
        ).fetchone()
        c.execute(
            "INSERT INTO ledger (address, kind, amount, balance_after, ref, at) "
            "VALUES (?, 'deposit', ?, ?, ?, ?)",
            (address, amount, available, ref, at),
        )
        return int(available)

    return tx


def bet_tx(bet: dict[str, Any]) -> Callable[[sqlite3.Connection], tuple[int, int]]:
    def tx(c: sqlite3.Connection) -> tuple[int, int]:
        cur = c.execute(
            "UPDATE accounts SET available = available - :amount, locked = locked + :amount "
            "WHERE address = :address AND available >= :amount",
            bet,
        )
        if cur.rowcount == 0:
            raise Refused(422, "insufficient_funds", "not enough available balance")
        try:
            c.execute(
                "INSERT INTO bets (bet_id, address, cell_id, amount, multiplier_bps, nonce, "
                "status, accepted_at, signature) VALUES (:bet_id, :address, :cell_id, :amount, "
                ":multiplier_bps, :nonce, 'confirmed', :accepted_at, :signature)",
                bet,
            )
        except sqlite3.IntegrityError as e:
            if "nonce" in str(e):
                raise Refused(409, "replayed_nonce", "nonce already used") from e
            raise Refused(409, "duplicate_cell_bet", "one bet per cell") from e
        available, locked = c.execute(
            "SELECT available, locked FROM accounts WHERE address = ?", (bet["address"],)
        ).fetchone()
        c.execute(
            "INSERT INTO ledger (address, kind, amount, balance_after, ref, at) "
            "VALUES (:address, 'stake', -:amount, :available, :bet_id, :accepted_at)",
            {**bet, "available": available},
        )
        return int(available), int(locked)

    return tx


class Client:
    """One WebSocket connection: its subscriptions and a bounded outbound queue."""

    def __init__(self) -> None:
        # 256 frames: a client further behind than that is dropped, never waited for.
        self.send, self.receive = trio.open_memory_channel[str](256)
        self.channels: set[str] = set()
        self.session: tuple[str, SessionKey] | None = None

    def push(self, frame: str) -> bool:
        try:
            self.send.send_nowait(frame)
        except trio.WouldBlock:
            return False
        return True


class Naive:
    def __init__(self, db_path: str, host: str, port: int, market: MarketConfig) -> None:
        self.ledger = Ledger(db_path)
        self.market = market
        self.domain = f"{host}:{port}"
        self.uri = f"http://{self.domain}"
        self.price = 10_000_000
        self.price_ts = 0
        self.grid: dict[str, Any] | None = None
        self.multipliers: dict[str, int] = {}
        self.challenges: dict[str, tuple[str, int]] = {}  # nonce → (address, expires_at)
        self.sessions: dict[str, tuple[str, SessionKey]] = {}  # token → (address, key)
        self.clients: set[Client] = set()
        self.by_address: dict[str, set[Client]] = {}

    # ── market data: a random walk priced with tap's formula ───────────────────────────────

    def _regrid(self, now: int) -> None:
        from tap.grid import placeable_columns, published_rows
        from tap.pricing import multiplier_bps, touch_probability

        m = self.market
        cells = []
        placeable_cols = placeable_columns(now, m)
        multipliers = {}
        c = now // m.column_ms
        for col in range(c + 1, c + 1 + m.columns_ahead):
            t_start = col * m.column_ms
            t_end = t_start + m.column_ms
            for row in published_rows(self.price, m.row_height, m.rows):
                lo = row * m.row_height
                p = touch_probability(
                    float(self.price),
                    float(lo),
                    float(lo + m.row_height),
                    0.6,
                    max(0, t_start - now),
                    t_end - now,
                )
                mult = multiplier_bps(p, m.house_edge_bps, m.max_multiplier_bps)
                ok = col in placeable_cols and mult >= m.min_multiplier_bps
                cell_id = f"{m.symbol}:{col}:{row}"
                if ok:
                    multipliers[cell_id] = mult
                cells.append(
                    {
                        "cell_id": cell_id,
                        "t_start": t_start,
                        "t_end": t_end,
                        "price_lo": lo,
                        "price_hi": lo + m.row_height,
                        "multiplier_bps": mult,
                        "placeable": ok,
                    }
                )
        self.multipliers = multipliers
        self.grid = {
            "symbol": m.symbol,
            "as_of": now,
            "price": self.price,
            "volatility": 0.6,
            "house_edge_bps": m.house_edge_bps,
            "monitoring_interval_ms": 0,
            "breaker": "closed",
            "cells": cells,
        }

    async def feed(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rng = random.Random(1)
        step = 0.6 * math.sqrt(0.25 / (365 * 24 * 3600))  # σ = 0.6 at one tick per 250 ms
        ticks = 0
        while True:
            self.price = max(1, round(self.price * math.exp(rng.gauss(0.0, step))))
            self.price_ts = now_ms()
            self._regrid(self.price_ts)
            price = _json.encode(
                {
                    "type": "price",
                    "symbol": self.market.symbol,
                    "ts": self.price_ts,
                    "price": self.price,
                }
            ).decode()
            self.broadcast(f"prices:{self.market.symbol}", price)
            if ticks % 4 == 0 and self.grid is not None:
                self.broadcast(
                    f"grid:{self.market.symbol}",
                    _json.encode({"type": "grid", **self.grid}).decode(),
                )
            if ticks == 0:
                task_status.started()
            ticks += 1
            await trio.sleep(0.25)

    def broadcast(self, channel: str, frame: str) -> None:
        for client in list(self.clients):
            if channel in client.channels:
                client.push(frame)  # market data: a lagging client just misses this one

    def to_account(self, address: str, frame: str) -> None:
        for client in list(self.by_address.get(address, ())):
            if "account" in client.channels and not client.push(frame):
                client.send.close()  # account data is never dropped: close instead

    # ── the bet path ─────────────────────────────────────────────────────────────────────

    async def place(self, address: str, key: SessionKey, req: BetRequest) -> dict[str, Any]:
        now = now_ms()
        if req.chain_id != CHAIN_ID:
            raise Refused(401, "wrong_chain", "wrong chain id")
        if abs(now - req.timestamp) > SKEW_MS:
            raise Refused(401, "stale_timestamp", "timestamp outside the window")
        payload = bet_payload(
            req.chain_id,
            address,
            req.cell_id,
            req.amount,
            req.nonce,
            req.timestamp,
            req.min_multiplier_bps,
        )
        if not key.verify(payload, req.signature):
            raise Refused(401, "bad_signature", "signature does not verify")
        mult = self.multipliers.get(req.cell_id)
        if mult is None:
            raise Refused(422, "cell_not_placeable", "cell not placeable")
        if not self.market.min_stake <= req.amount <= self.market.max_stake:
            raise Refused(422, "amount_out_of_range", "amount out of range")
        bet = {
            "bet_id": secrets.token_hex(10),
            "address": address,
            "cell_id": req.cell_id,
            "amount": req.amount,
            "multiplier_bps": mult,
            "nonce": req.nonce,
            "accepted_at": now,
            "signature": req.signature,
        }
        available, locked = await self.ledger.run(bet_tx(bet))
        view = {
            "bet_id": bet["bet_id"],
            "address": address,
            "cell_id": req.cell_id,
            "amount": req.amount,
            "multiplier_bps": mult,
            "nonce": req.nonce,
            "status": "confirmed",
            "accepted_at": now,
            "confirmed_at": now_ms(),
        }
        self.to_account(address, _json.encode({"type": "bet_confirmed", "bet": view}).decode())
        self.to_account(
            address,
            _json.encode({"type": "balance", "available": available, "locked": locked}).decode(),
        )
        return {**view, "status": "pending"}


def create_app(naive: Naive) -> Any:
    from quart import Response, request, websocket
    from quart_trio import QuartTrio

    app = QuartTrio("loadgen-naive")

    def reply(payload: Any, status: int = 200) -> Response:
        return Response(_json.encode(payload), status=status, content_type="application/json")

    def error(status: int, code: str, message: str) -> Response:
        return reply({"error": {"code": code, "message": message}}, status)

    def session() -> tuple[str, SessionKey] | None:
        auth = request.headers.get("Authorization", "")
        return naive.sessions.get(auth[7:]) if auth.startswith("Bearer ") else None

    def decode(kind: type[T], data: bytes | str) -> T:
        try:
            return msgspec.json.decode(data, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise Refused(400, "invalid_request", str(e)) from e

    @app.errorhandler(Refused)
    async def refused(e: Refused) -> Response:
        return error(e.status, e.code, str(e))

    @app.get("/readyz")
    async def readyz() -> Response:
        ok = naive.grid is not None
        return reply({"status": "pass" if ok else "fail"}, 200 if ok else 503)

    @app.get("/api/markets")
    async def markets() -> Response:
        return reply({"markets": [msgspec.to_builtins(naive.market)]})

    @app.get("/api/grid/<symbol>")
    async def grid(symbol: str) -> Response:
        if symbol != naive.market.symbol or naive.grid is None:
            return error(404, "not_found", f"no market {symbol!r}")
        return reply(naive.grid)

    @app.post("/api/auth/challenge")
    async def challenge() -> Response:
        req = decode(ChallengeRequest, await request.get_data())
        nonce = secrets.token_hex(8)
        now = now_ms()
        naive.challenges[nonce] = (req.address.lower(), now + 300_000)
        return reply(
            {
                "nonce": nonce,
                "domain": naive.domain,
                "uri": naive.uri,
                "chain_id": CHAIN_ID,
                "issued_at": iso(now),
                "expiration_time": iso(now + 300_000),
            }
        )

    @app.post("/api/auth/login")
    async def login() -> Response:
        from tap.siwe import parse, recover_address

        req = decode(LoginRequest, await request.get_data())
        try:
            msg = parse(req.message)
        except ValueError as e:
            return error(400, "invalid_request", str(e))
        issued = naive.challenges.pop(msg.nonce, None)
        if issued is None or issued[0] != msg.address.lower() or issued[1] < now_ms():
            return error(401, "unknown_nonce", "nonce not issued, used or expired")
        if msg.domain != naive.domain or msg.chain_id != CHAIN_ID:
            return error(401, "wrong_domain", "message is for another server")
        if recover_address(req.message, req.signature) != msg.address.lower():
            return error(401, "bad_signature", "signature does not match the address")
        keys = [r[len(SESSION_URN) :] for r in msg.resources if r.startswith(SESSION_URN)]
        key = SessionKey.from_hex(keys[0]) if len(keys) == 1 else None
        if key is None:
            return error(400, "invalid_request", "exactly one session key resource expected")
        token = secrets.token_urlsafe(24)
        naive.sessions[token] = (msg.address.lower(), key)
        return reply(
            {
                "token": token,
                "address": msg.address.lower(),
                "session_key": key.hex,
                "expires_at": now_ms() + 86_400_000,
            }
        )

    @app.post("/api/deposits")
    async def deposit() -> Response:
        s = session()
        if s is None:
            return error(401, "unauthorized", "bearer token required")
        req = decode(DepositRequest, await request.get_data())
        at = now_ms()
        ref = f"deposit-{secrets.token_hex(8)}"
        available = await naive.ledger.run(deposit_tx(s[0], req.amount, ref, at))
        entry = {
            "kind": "deposit",
            "amount": req.amount,
            "balance_after": available,
            "ref": ref,
            "at": at,
        }
        return reply({"entry": entry}, 201)

    @app.post("/api/bets")
    async def place_bet() -> Response:
        s = session()
        if s is None:
            return error(401, "unauthorized", "bearer token required")
        req = decode(BetRequest, await request.get_data())
        return reply(await naive.place(s[0], s[1], req), 202)

    @app.get("/api/bets/<bet_id>")
    async def get_bet(bet_id: str) -> Response:
        s = session()
        if s is None:
            return error(401, "unauthorized", "bearer token required")
        row = await naive.ledger.run(
            lambda c: c.execute(
                "SELECT bet_id, address, cell_id, amount, multiplier_bps, nonce, status, "
                "accepted_at FROM bets WHERE bet_id = ? AND address = ?",
                (bet_id, s[0]),
            ).fetchone()
        )
        if row is None:
            return error(404, "not_found", "no such bet")
        keys = (
            "bet_id",
            "address",
            "cell_id",
            "amount",
            "multiplier_bps",
            "nonce",
            "status",
            "accepted_at",
        )
        return reply(dict(zip(keys, row, strict=True)))

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        client = Client()
        naive.clients.add(client)

        async def writer() -> None:
            async for frame in client.receive:
                await websocket.send(frame)
            await websocket.close(1013)

        async def reader() -> None:
            while True:
                try:
                    frame = msgspec.json.decode(await websocket.receive())
                    kind = frame["type"]
                except (msgspec.DecodeError, KeyError, TypeError):
                    client.push(
                        _json.encode(
                            {
                                "type": "error",
                                "req_id": None,
                                "error": {"code": "invalid_request", "message": "malformed frame"},
                            }
                        ).decode()
                    )
                    continue
                req_id = frame.get("req_id")
                if kind == "ping":
                    client.push(_json.encode({"type": "pong", "req_id": req_id}).decode())
                elif kind == "auth":
                    found = naive.sessions.get(frame.get("token", ""))
                    if found is None:
                        client.push(
                            _json.encode(
                                {
                                    "type": "error",
                                    "req_id": None,
                                    "error": {"code": "unauthorized", "message": "unknown token"},
                                }
                            ).decode()
                        )
                        continue
                    client.session = found
                    naive.by_address.setdefault(found[0], set()).add(client)
                elif kind == "subscribe":
                    client.channels.update(frame.get("channels", []))
                    if f"grid:{naive.market.symbol}" in client.channels and naive.grid:
                        client.push(_json.encode({"type": "grid", **naive.grid}).decode())
                elif kind == "unsubscribe":
                    client.channels.difference_update(frame.get("channels", []))
                elif kind == "place_bet":
                    await place_over_ws(frame, req_id)

        async def place_over_ws(frame: dict[str, Any], req_id: Any) -> None:
            found = client.session
            try:
                if found is None:
                    raise Refused(401, "unauthorized", "send auth first")
                fields = {k: v for k, v in frame.items() if k not in ("type", "req_id")}
                req = msgspec.convert(fields, BetRequest)
                bet = await naive.place(found[0], found[1], req)
            except (msgspec.ValidationError, Refused) as e:
                code = e.code if isinstance(e, Refused) else "invalid_request"
                client.push(
                    _json.encode(
                        {
                            "type": "error",
                            "req_id": req_id,
                            "error": {"code": code, "message": str(e)},
                        }
                    ).decode()
                )
                return
            client.push(_json.encode({"type": "bet_ack", "req_id": req_id, "bet": bet}).decode())

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await reader()
        finally:
            naive.clients.discard(client)
            if client.session is not None:
                naive.by_address.get(client.session[0], set()).discard(client)

    return app


async def serve_naive(db_path: str, host: str, port: int) -> None:
    from hypercorn.trio import serve

    naive = Naive(db_path, host, port, MarketConfig())
    app = create_app(naive)
    async with trio.open_nursery() as nursery:
        await nursery.start(naive.feed)
        await serve(app, hypercorn_config(host, port))
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.peers.naive", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True, help="SQLite file (created if missing)")
    args = parser.parse_args(argv)
    try:
        trio.run(serve_naive, args.db, args.host, args.port)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
