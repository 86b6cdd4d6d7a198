"""End-to-end helpers: a real server on port 0 and real clients (httpx on trio, trio-websocket).

Not a test module. `serving(tmp_path, **overrides)` runs the whole process (`run_server`) with a
manual price feed and short columns, and stops it gracefully on exit; `Player` is one wallet with
its Ed25519 session key, logging in with SIWE and signing bets and withdrawals exactly as a client
would; `WsClient` reads frames and hands them out by type.

Time: the server runs on real time (real sockets and worker threads; a mock clock would jump past
every deadline), so nothing here sleeps to let time pass. Resolution is driven by pushing ticks
with explicit timestamps (`Server.walk`), which may run ahead of the wall clock, and every wait
is bounded by `trio.fail_after`.
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

from tap import siwe
from tap.admission import bet_payload, withdrawal_payload
from tap.config import Config, MarketConfig, load_config
from tap.messages import Tick
from tap.runtime.supervisor import Running, run_server

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIG = REPO / "configs" / "test.toml"
ADMIN_TOKEN = "e2e-admin-token-0123456789"
START_PRICE = 10_000_040  # increments: 100000.40 USD, inside row 10000
WAIT_S = 5.0  # the bound on any single wait for the server


def _toml(value: object) -> str:
    """A Python value as the TOML literal `TAP__…` overrides are parsed from."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


async def wait_until(predicate: Callable[[], bool], within: float = WAIT_S) -> None:
    """Poll an in-process condition (a few ms apart) until it holds; fail after `within` s.

    Polling, not an event: the state belongs to the server's actors, which signal nobody."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


@dataclass
class Server:
    running: Running
    cfg: Config
    db_path: Path
    admin_token: str | None
    done: trio.Event  # set when run_server has returned (the whole process has shut down)
    feed_ts: int = 0  # the newest tick timestamp pushed so far
    last_price: int = START_PRICE
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def ws_url(self) -> str:
        return "ws" + self.running.url.removeprefix("http") + "/ws"

    @property
    def market(self) -> MarketConfig:
        return self.cfg.markets[0]

    @property
    def symbol(self) -> str:
        return self.market.symbol

    def now(self) -> int:
        return self.running.clock.now_ms()

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", WAIT_S)
        client = httpx.AsyncClient(base_url=self.url, **kwargs)
        self._clients.append(client)
        return client

    def player(self) -> Player:
        return Player(self)

    # ── the price feed ──────────────────────────────────────────────────────────────────────

    def push(self, price: int, ts: int | None = None) -> Tick:
        """One tick at `price`; `ts` defaults to now, and never goes before the last one."""
        assert self.running.manual_feed is not None, "feed.source is not manual"
        at = max(self.now() if ts is None else ts, self.feed_ts)
        tick = self.running.manual_feed.push(price, ts=at)
        self.feed_ts = at
        self.last_price = price
        return tick

    async def walk(self, to_ts: int, price: int, step_ms: int = 200) -> None:
        """Ticks at `price` every `step_ms` from the last tick up to `to_ts` (inclusive): a
        gap-free stretch of feed, however far ahead of the wall clock it runs."""
        at = self.feed_ts
        while at < to_ts:
            at = min(at + step_ms, to_ts)
            self.push(price, at)
            if self.running.manual_feed is not None:
                await (
                    trio.lowlevel.checkpoint()
                )  # let ingest drain: the manual feed's buffer is bounded
        await self.settled_feed()

    async def settled_feed(self) -> None:
        """Wait until the market actor has seen the last pushed tick."""
        svc = self.running.services
        await wait_until(
            lambda: (t := svc.market.last_tick(self.symbol)) is not None and t.ts >= self.feed_ts
        )

    # ── admin and state ─────────────────────────────────────────────────────────────────────

    async def admin(self, path: str, body: dict[str, Any]) -> httpx.Response:
        client = self.http()
        return await client.post(
            path, json=body, headers={"Authorization": f"Bearer {self.admin_token}"}
        )

    async def set_breaker(self, mode: str) -> None:
        """Operator override, then wait until admission and the grid both see it."""
        r = await self.admin("/admin/breaker", {"mode": mode})
        assert r.status_code == 200, r.text
        if mode in ("open", "closed"):
            svc = self.running.services
            await wait_until(
                lambda: (
                    svc.breaker_state(self.symbol) == mode
                    and ((g := svc.market.grid(self.symbol)) is None or g.breaker == mode)
                )
            )

    async def grid(self) -> dict[str, Any]:
        r = await self.http().get(f"/api/grid/{self.symbol}")
        assert r.status_code == 200, r.text
        grid: dict[str, Any] = r.json()
        return grid

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for client in self._clients:
                await client.aclose()


def env_for(tmp_path: Path, overrides: dict[str, Any]) -> dict[str, str]:
    env = {
        "TAP__SERVER__DB_PATH": _toml(str(tmp_path / "tap.db")),
        "TAP__FEED__SOURCE": '"manual"',
        "TAP__MARKETS__0__COLUMN_MS": "1000",
    }
    for key, value in overrides.items():
        env["TAP__" + key.upper()] = _toml(value)
    return env


async def start_server(
    nursery: trio.Nursery,
    tmp_path: Path,
    *,
    breaker: str | None = "closed",
    price: int | None = START_PRICE,
    admin_token: str | None = ADMIN_TOKEN,
    **overrides: Any,
) -> Server:
    """Start the whole server in `nursery`: a manual feed, 1 s columns, a database in `tmp_path`.

    `overrides` are config keys below the `TAP__` prefix with `__` between levels
    (`feed__max_gap_ms=500`, `markets__0__rows=40`). Unless `price` is None, one tick is pushed
    and the grid awaited; unless `breaker` is None the operator override sets it (the breaker
    starts open and would close only after `breaker.hysteresis_ms` of fresh ticks).
    """
    cfg = load_config(str(TEST_CONFIG), environ=env_for(tmp_path, overrides))
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[Running]) -> None:
        try:
            await run_server(
                cfg, handle_signals=False, admin_token=admin_token, task_status=task_status
            )
        finally:
            done.set()

    running: Running = await nursery.start(run)
    server = Server(running, cfg, Path(cfg.server.db_path), admin_token, done)
    if price is not None:
        server.push(price)
        await server.settled_feed()
        await wait_until(lambda: running.services.market.grid(server.symbol) is not None)
    if breaker is not None:
        await server.set_breaker(breaker)
    return server


@asynccontextmanager
async def serving(tmp_path: Path, *, within: float = 30.0, **kwargs: Any) -> AsyncIterator[Server]:
    """`start_server` for the body of an `async with`, bounded by `within` s; on exit the server
    is stopped the way SIGTERM stops it (graceful drain), and its shutdown is awaited."""
    with trio.fail_after(within):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, tmp_path, **kwargs)
            try:
                yield server
            finally:
                await server.aclose()
                server.running.stop.set()


# ── grid cells ──────────────────────────────────────────────────────────────────────────────


def placeable_cells(grid: dict[str, Any], *, after_ts: int = 0) -> list[dict[str, Any]]:
    """Placeable cells whose window starts after `after_ts`, earliest column first, then nearest
    the grid's price."""
    price = grid["price"]
    cells = [c for c in grid["cells"] if c["placeable"] and c["t_start"] > after_ts]
    return sorted(cells, key=lambda c: (c["t_start"], abs(c["price_lo"] - price)))


async def pick_cell(server: Server, *, min_lead_ms: int = 0) -> dict[str, Any]:
    """The earliest placeable cell nearest the price whose window the feed has not reached yet
    (and that starts at least `min_lead_ms` after now)."""
    grid = await server.grid()
    # A cell whose column locks within LOCK_MARGIN_MS would race the bet that follows (a busy
    # machine takes that long between this read and the admission): skip it.
    m = server.market
    locks_after = server.now() + LOCK_MARGIN_MS + m.lockout_columns * m.column_ms
    after = max(server.feed_ts, server.now() + min_lead_ms, locks_after)
    cells = placeable_cells(grid, after_ts=after)
    assert cells, f"no placeable cell after {after}: {grid['breaker']=}"
    return cells[0]


LOCK_MARGIN_MS = 300


def outside(cell: dict[str, Any], row_height: int) -> int:
    """A price two rows below the cell's band: does not touch it."""
    return int(cell["price_lo"]) - 2 * row_height


# ── a player ────────────────────────────────────────────────────────────────────────────────


def new_nonce() -> str:
    return secrets.token_hex(10)


class Player:
    """One wallet (eth-account) with an Ed25519 session key (PyNaCl), over HTTP and WS."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.account = Account.create()
        self.address = self.account.address.lower()
        self.session_key = SigningKey.generate()
        self.session_hex = self.session_key.verify_key.encode().hex()
        self.http = server.http()
        self.token: str | None = None

    @property
    def chain_id(self) -> int:
        return self.server.cfg.auth.chain_id

    @property
    def auth(self) -> dict[str, str]:
        assert self.token is not None, "log in first"
        return {"Authorization": f"Bearer {self.token}"}

    # ── login ──

    async def challenge(self) -> dict[str, Any]:
        r = await self.http.post("/api/auth/challenge", json={"address": self.account.address})
        assert r.status_code == 200, r.text
        challenge: dict[str, Any] = r.json()
        return challenge

    def login_message(self, challenge: dict[str, Any], **changes: Any) -> str:
        fields: dict[str, Any] = {
            "domain": challenge["domain"],
            "address": self.account.address,
            "uri": challenge["uri"],
            "chain_id": challenge["chain_id"],
            "nonce": challenge["nonce"],
            "issued_at_ms": siwe.iso_to_ms(challenge["issued_at"]),
            "expiration_ms": siwe.iso_to_ms(challenge["expiration_time"]),
            "session_key_hex": self.session_hex,
        }
        fields.update(changes)
        return siwe.login_message(**fields)

    def sign_message(self, message: str, account: Any = None) -> str:
        signed = (account or self.account).sign_message(encode_defunct(text=message))
        return "0x" + bytes(signed.signature).hex()

    async def post_login(self, message: str, signature: str) -> httpx.Response:
        return await self.http.post(
            "/api/auth/login", json={"message": message, "signature": signature}
        )

    async def login(self) -> dict[str, Any]:
        message = self.login_message(await self.challenge())
        r = await self.post_login(message, self.sign_message(message))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        self.token = body["token"]
        return body

    # ── money ──

    async def deposit(self, amount: int) -> dict[str, Any]:
        r = await self.http.post("/api/deposits", json={"amount": amount}, headers=self.auth)
        assert r.status_code == 201, r.text
        entry: dict[str, Any] = r.json()["entry"]
        return entry

    async def balance(self) -> dict[str, Any]:
        r = await self.http.get("/api/balance", headers=self.auth)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def ledger(self, limit: int = 500) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            r = await self.http.get("/api/ledger", params=params, headers=self.auth)
            assert r.status_code == 200, r.text
            body = r.json()
            items += body["items"]
            cursor = body["next_cursor"]
            if not cursor:
                return items

    def signed_withdrawal(
        self,
        amount: int,
        *,
        nonce: str | None = None,
        timestamp: int | None = None,
        chain_id: int | None = None,
        key: SigningKey | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "amount": amount,
            "nonce": nonce or new_nonce(),
            "timestamp": self.server.now() if timestamp is None else timestamp,
            "chain_id": self.chain_id if chain_id is None else chain_id,
        }
        payload = withdrawal_payload(
            body["chain_id"], self.address, amount, body["nonce"], body["timestamp"]
        )
        body["signature"] = (key or self.session_key).sign(payload).signature.hex()
        return body

    async def withdraw(self, amount: int, **kwargs: Any) -> httpx.Response:
        return await self.http.post(
            "/api/withdrawals", json=self.signed_withdrawal(amount, **kwargs), headers=self.auth
        )

    # ── bets ──

    def signed_bet(
        self,
        cell_id: str,
        amount: int,
        nonce: str | None = None,
        timestamp: int | None = None,
        *,
        chain_id: int | None = None,
        min_multiplier_bps: int = 0,
        key: SigningKey | None = None,
        address: str | None = None,
    ) -> dict[str, Any]:
        """The POST /api/bets body, signed by this player's session key (or `key`, over the
        payload of `address`)."""
        body: dict[str, Any] = {
            "cell_id": cell_id,
            "amount": amount,
            "nonce": nonce or new_nonce(),
            "timestamp": self.server.now() if timestamp is None else timestamp,
            "chain_id": self.chain_id if chain_id is None else chain_id,
            "min_multiplier_bps": min_multiplier_bps,
        }
        payload = bet_payload(
            body["chain_id"],
            address or self.address,
            cell_id,
            amount,
            body["nonce"],
            body["timestamp"],
            min_multiplier_bps,
        )
        body["signature"] = (key or self.session_key).sign(payload).signature.hex()
        return body

    async def place(
        self,
        body: dict[str, Any] | None = None,
        *,
        wait: int | None = None,
        client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """POST a bet: `body` as given, or `signed_bet(**kwargs)`."""
        if body is None:
            body = self.signed_bet(**kwargs)
        headers = dict(self.auth)
        if wait is not None:
            headers["Prefer"] = f"wait={wait}"
        return await (client or self.http).post("/api/bets", json=body, headers=headers)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.auth)

    # ── WebSocket ──

    @asynccontextmanager
    async def ws(self, *, auth: bool = True) -> AsyncIterator[WsClient]:
        async with connect_ws(self.server) as client:
            if auth:
                assert self.token is not None
                await client.auth(self.token)
            yield client


class WsClient:
    """A trio-websocket connection that decodes frames and hands them out by `type`.

    Frames not asked for yet wait in a backlog (market data there is trimmed), so asking for a
    `bet_resolved` does not lose the `balance` that came before it."""

    MAX_BACKLOG = 2000

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.backlog: deque[dict[str, Any]] = deque()
        self._pings = 0

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        await self.ws.send_message(frame)

    async def auth(self, token: str) -> None:
        await self.send({"type": "auth", "token": token})

    async def subscribe(self, *channels: str, barrier: bool = True) -> None:
        """Subscribe; with `barrier`, wait for a ping's pong so the subscription took effect."""
        await self.send({"type": "subscribe", "channels": list(channels)})
        if barrier:
            await self.ping()

    async def ping(self) -> dict[str, Any]:
        self._pings += 1
        req_id = f"ping-{self._pings}"
        await self.send({"type": "ping", "req_id": req_id})
        return await self.next_of_type("pong", where=lambda f: f["req_id"] == req_id)

    async def _receive(self) -> dict[str, Any]:
        raw = await self.ws.get_message()
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def next_of_type(
        self,
        kind: str,
        within: float = WAIT_S,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next frame of type `kind` (matching `where`), from the backlog or the socket."""
        for frame in list(self.backlog):
            if frame["type"] == kind and (where is None or where(frame)):
                self.backlog.remove(frame)
                return frame
        with trio.fail_after(within):
            while True:
                frame = await self._receive()
                if frame["type"] == kind and (where is None or where(frame)):
                    return frame
                self.backlog.append(frame)
                if len(self.backlog) > self.MAX_BACKLOG:
                    self._trim()

    def _trim(self) -> None:
        kept = [f for f in self.backlog if f["type"] not in ("price", "grid")]
        self.backlog = deque(kept[-self.MAX_BACKLOG :])

    def frames_of(self, kinds: Iterable[str]) -> list[dict[str, Any]]:
        wanted = set(kinds)
        return [f for f in self.backlog if f["type"] in wanted]


@asynccontextmanager
async def connect_ws(server: Server) -> AsyncIterator[WsClient]:
    async with trio_websocket.open_websocket_url(
        server.ws_url, connect_timeout=WAIT_S, disconnect_timeout=1
    ) as ws:
        yield WsClient(ws)


# ── the money model (README) ────────────────────────────────────────────────────────────────


def ledger_totals(entries: list[dict[str, Any]]) -> tuple[int, int]:
    """(Σ amount, Σ locked_delta): per README these equal (available, locked)."""
    return sum(e["amount"] for e in entries), sum(e["locked_delta"] for e in entries)
