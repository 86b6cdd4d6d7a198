"""Virtual users that behave like real tap clients, and the crowd that runs them.

Each virtual user has an eth-account wallet and an Ed25519 session key
(`loadgen.generator.signer`), logs
in with Sign-In with Ethereum, takes a mock deposit, keeps one WebSocket open (`account`, and
for a few of them `prices` + `grid`) and one HTTP keep-alive connection, and taps placeable
cells over HTTP (`POST /api/bets`) or the WebSocket (`place_bet`). Every bet it gets a 202 /
`bet_ack` for must later be answered by `bet_confirmed` or `bet_rejected` on its WebSocket; the
crowd's `ConfirmationTracker` reports any that never are. If the server closes a user's
WebSocket (1013 when its account queue overflows) the user reconnects and asks for its open bets
over HTTP, as API.md tells clients to; those answers are counted apart.

It decides the client behaviour. It leaves the timing of taps to `loadgen.generator.engine` (a user
is a
*slot*: it has one tap in flight at a time) and the judging to `loadgen.generator.thresholds`.

Signing is off the hot loop: `Crowd.presign` keeps each user a small queue of bets signed a
second or so ahead, by the worker process, for cells chosen from the newest grid; `fire` only
takes one and sends pre-encoded bytes. Should a queue run dry, `fire` signs one on the spot
rather than drop the arrival, and counts it (`signed_inline`) so the report shows it.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio
import trio_websocket
from nacl.signing import SigningKey

from loadgen.generator.h1 import HttpConnection, HttpError, Response
from loadgen.generator.market import (
    ChallengeView,
    Frame,
    GridView,
    LoginView,
    MarketList,
    MarketView,
    bet_decoder,
    error_code,
    frame_decoder,
)
from loadgen.generator.recorder import (
    BET_HTTP,
    BET_WS,
    CODE_STATUS,
    TRANSPORT,
    ConfirmationTracker,
    Recorder,
)
from loadgen.generator.scenario import ClientSpec, parse_duration
from loadgen.generator.signer import Challenge, Identity, Signer, derive_secret
from tap.admission import bet_payload
from tap.messages import (
    BetRequest,
    ChallengeRequest,
    DepositRequest,
    LoginRequest,
    WsAuth,
    WsPing,
    WsPlaceBet,
    WsSubscribe,
)

_json = msgspec.json.Encoder()
_JSON_HEADER = b"Content-Type: application/json\r\n"
_READY = "loadgen-ready"  # req_id of the ping that proves auth + subscribe were processed
_MAX_DEPTH = 64  # signed bets queued per user, whatever the rate (they age: see `take`)
_MAX_SIGNED_AGE_MS = 20_000  # well inside the server's ±30 s timestamp window
_REFRESH_AFTER_MS = 10_000  # a queued bet older than this is re-signed rather than kept
# Frames the users need not read. Each lost bet brings `bet_resolved` + `balance` at its column's
# end, for every user at once; skipping them by prefix (msgspec and most encoders write the tag
# first; any other layout is simply decoded) keeps that burst from stalling the dispatcher.
_IGNORED_FRAMES = ('{"type":"bet_resolved"', '{"type":"balance"')


def wall_ms() -> int:
    return int(time.time() * 1000)


class SetupError(RuntimeError):
    """The crowd could not get ready (a login, deposit or WebSocket failed); says which."""


class Target:
    """Where the server is: host, port, and the WebSocket URL."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{base_url!r}: expected http://host:port (TLS is not supported)")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.ws_url = f"ws://{self.host}:{self.port}/ws"

    def connection(self, idle_limit: float = 4.0) -> HttpConnection:
        return HttpConnection(self.host, self.port, idle_limit=idle_limit)


class PreparedBet:
    """A signed bet, encoded for the transport it will go over."""

    __slots__ = ("cell_id", "data", "nonce", "over_ws", "t_start", "timestamp")

    def __init__(
        self, cell_id: str, t_start: int, nonce: str, timestamp: int, over_ws: bool, data: bytes
    ) -> None:
        self.cell_id = cell_id
        self.t_start = t_start
        self.nonce = nonce
        self.timestamp = timestamp
        self.over_ws = over_ws
        self.data = data  # HTTP body, or the WebSocket text frame's UTF-8 bytes


class VirtualUser:
    def __init__(self, identity: Identity, target: Target, idle_limit: float = 4.0) -> None:
        self.index = identity.index
        self.identity = identity
        self.address = identity.address.lower()
        self.http = target.connection(idle_limit)
        self.token = ""
        self.bet_head = b""
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.market_data = False
        self.ready: deque[PreparedBet] = deque()
        self.used: dict[str, int] = {}  # cell_id → t_end of cells this user already bet on
        self.cursor = identity.index * 7919  # spreads users over different cells
        self.seq = 0
        # WebSocket requests in flight: req_id → (due time, event set when answered)
        self.waiting: dict[str, tuple[float, trio.Event]] = {}
        self.connected = trio.Event()
        self.ever_connected = False
        self.signing_key: SigningKey | None = None  # only for `Crowd.sign_inline`

    def auth_header(self) -> bytes:
        return f"Authorization: Bearer {self.token}\r\n".encode()

    def take(self, now_ms: int, market: MarketView) -> tuple[PreparedBet | None, int]:
        """The next signed bet still worth sending, and how many went stale on the way."""
        stale = 0
        while self.ready:
            bet = self.ready.popleft()
            if now_ms - bet.timestamp < _MAX_SIGNED_AGE_MS and market.still_placeable(
                bet.cell_id, bet.t_start, now_ms + 500
            ):
                return bet, stale
            stale += 1
        return None, stale


class Crowd:
    """All virtual users of a run, their shared market view and the bookkeeping of their bets."""

    def __init__(
        self,
        target: Target,
        spec: ClientSpec,
        recorder: Recorder,
        *,
        seed: int = 0,
        lead_s: float = 1.0,
    ) -> None:
        self.target = target
        self.spec = spec
        self.recorder = recorder  # replaced per probe by the benches
        self.setup_recorder = Recorder()
        self.tracker = ConfirmationTracker()
        self.timeout = parse_duration(spec.timeout)
        seed = seed or spec.seed or secrets.randbits(63)
        self.seed = seed
        self.signer_seed = seed.to_bytes(8, "big")  # keys of every user derive from it
        self.rng = random.Random(seed)
        self.run_tag = "".join(
            self.rng.choice("abcdefghijkmnopqrstuvwxyz0123456789") for _ in range(12)
        )
        self.users: list[VirtualUser] = []
        self.market: MarketView | None = None
        self.chain_id = 0
        self.stake = 0
        self.rate = 0.0  # current target arrival rate; sizes the signed-bet queues
        self.lead_s = lead_s  # how far ahead bets are signed
        self.stopping = False
        self.counters: Counter[str] = Counter()  # stale_signed, no_cell, ws_closed, …
        self.ws_close_codes: Counter[int] = Counter()
        self.on_price: Callable[[Frame, float], None] | None = None

    # ── setup ─────────────────────────────────────────────────────────────────────────────

    async def _call(
        self,
        conn: HttpConnection,
        route: str,
        method: str,
        path: str,
        body: msgspec.Struct | None = None,
        token: str = "",
    ) -> Response:
        headers = _JSON_HEADER + (f"Authorization: Bearer {token}\r\n".encode() if token else b"")
        data = b"" if body is None else _json.encode(body)
        t0 = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                resp = await conn.request(method, path, data, headers)
        except (trio.TooSlowError, HttpError, OSError, trio.BrokenResourceError) as e:
            self.setup_recorder.record(route, t0, trio.current_time(), TRANSPORT, type(e).__name__)
            raise SetupError(f"{method} {path}: {type(e).__name__}: {e}") from e
        code = None if 200 <= resp.status < 300 else error_code(resp.body)
        self.setup_recorder.record(route, t0, trio.current_time(), resp.status, code)
        return resp

    async def fetch_market(self) -> MarketView:
        conn = self.target.connection()
        try:
            resp = await self._call(conn, "GET /api/markets", "GET", "/api/markets")
            if resp.status != 200:
                raise SetupError(f"GET /api/markets: {resp.status} {resp.body[:200]!r}")
            markets = msgspec.json.decode(resp.body, type=MarketList).markets
            spec = next((m for m in markets if m.symbol == self.spec.symbol), None)
            if spec is None:
                raise SetupError(f"no market {self.spec.symbol!r} in GET /api/markets")
            self.market = MarketView(spec, columns=self.spec.columns)
            await self.poll_grid(conn)
        finally:
            conn.close()
        self.stake = self.spec.stake or spec.min_stake
        return self.market

    async def poll_grid(self, conn: HttpConnection) -> None:
        assert self.market is not None
        path = f"/api/grid/{self.spec.symbol}"
        resp = await self._call(conn, "GET /api/grid/{symbol}", "GET", path)
        if resp.status == 200:
            grid = msgspec.json.decode(resp.body, type=GridView)
            self.market.update(grid.as_of, grid.cells, grid.breaker)

    async def setup(self, nursery: trio.Nursery, signer: Signer) -> None:
        """Log every user in, fund it, open its WebSocket. Raises `SetupError` on any failure."""
        if self.market is None:
            await self.fetch_market()
        identities = await signer.identities()
        keep_alive = parse_duration(self.spec.keep_alive)
        self.users = [VirtualUser(ident, self.target, keep_alive) for ident in identities]
        for u in self.users[: self.spec.market_data_vus]:
            u.market_data = True
        limiter = trio.CapacityLimiter(self.spec.setup_concurrency)
        challenges: list[Challenge | None] = [None] * len(self.users)

        async def challenge(u: VirtualUser) -> None:
            async with limiter:
                resp = await self._call(
                    u.http,
                    "POST /api/auth/challenge",
                    "POST",
                    "/api/auth/challenge",
                    ChallengeRequest(address=u.identity.address),
                )
            if resp.status != 200:
                raise SetupError(f"challenge for {u.address}: {resp.status} {resp.body[:200]!r}")
            ch = msgspec.json.decode(resp.body, type=ChallengeView)
            challenges[u.index] = Challenge(
                u.index, ch.domain, ch.uri, ch.chain_id, ch.nonce, ch.issued_at, ch.expiration_time
            )

        async with trio.open_nursery() as n:
            for u in self.users:
                n.start_soon(challenge, u)
        ready = [c for c in challenges if c is not None]
        self.chain_id = ready[0].chain_id
        signed = await signer.sign_logins(ready)

        async def login(u: VirtualUser, message: str, signature: str) -> None:
            async with limiter:
                resp = await self._call(
                    u.http,
                    "POST /api/auth/login",
                    "POST",
                    "/api/auth/login",
                    LoginRequest(message=message, signature=signature),
                )
                if resp.status != 200:
                    raise SetupError(f"login of {u.address}: {resp.status} {resp.body[:300]!r}")
                u.token = msgspec.json.decode(resp.body, type=LoginView).token
                u.bet_head = u.http.head("POST", "/api/bets", _JSON_HEADER + u.auth_header())
                resp = await self._call(
                    u.http,
                    "POST /api/deposits",
                    "POST",
                    "/api/deposits",
                    DepositRequest(amount=self.spec.deposit),
                    u.token,
                )
                if resp.status == 404:
                    raise SetupError("POST /api/deposits: 404 (is payments.mock_deposits on?)")
                if not 200 <= resp.status < 300:
                    raise SetupError(f"deposit of {u.address}: {resp.status} {resp.body[:200]!r}")
                await nursery.start(self._ws_session, u)

        async with trio.open_nursery() as n:
            for ch, (message, signature) in zip(ready, signed, strict=True):
                n.start_soon(login, self.users[ch.index], message, signature)

    # ── the WebSocket of one user ───────────────────────────────────────────────────────────

    def _channels(self, u: VirtualUser) -> list[str]:
        sym = self.spec.symbol
        return ["account", f"prices:{sym}", f"grid:{sym}"] if u.market_data else ["account"]

    async def _ws_session(
        self, u: VirtualUser, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the user's WebSocket open for the whole run; reconnect and resync if it drops."""
        while not self.stopping:
            first = not u.ever_connected
            try:
                async with trio_websocket.open_websocket_url(
                    self.target.ws_url,
                    message_queue_size=64,  # frames decoded as they come; 64 rides out a burst
                    max_message_size=4 * 1024 * 1024,
                    receive_buffer_size=65536,
                ) as ws:
                    u.ws = ws
                    for frame in (
                        WsAuth(token=u.token),
                        WsSubscribe(channels=self._channels(u)),
                        WsPing(req_id=_READY),
                    ):
                        await ws.send_message(_json.encode(frame).decode())
                    if not first:
                        self.counters["ws_reconnects"] += 1
                        # A resync may wait for a while; it must not delay reading frames.
                        async with trio.open_nursery() as n:
                            n.start_soon(self._resync, u)
                            await self._read_until_closed(u, ws, None)
                            n.cancel_scope.cancel()
                    else:
                        await self._read_until_closed(u, ws, task_status)
            except trio_websocket.ConnectionClosed as e:
                code = e.reason.code if e.reason is not None else 0
                self.ws_close_codes[code] += 1
            except (
                trio_websocket.HandshakeError,
                trio_websocket.ConnectionRejected,
                trio_websocket.ConnectionTimeout,
                trio_websocket.DisconnectionTimeout,
                OSError,
                trio.BrokenResourceError,
            ) as e:
                if not u.ever_connected:
                    raise SetupError(f"WebSocket of {u.address}: {type(e).__name__}: {e}") from e
                self.counters["ws_connect_failures"] += 1
            finally:
                u.ws = None
                u.connected = trio.Event()
                self._fail_waiting(u)
            if not u.ever_connected:
                raise SetupError(f"WebSocket of {u.address} closed during setup")
            await trio.sleep(0.2)

    def _fail_waiting(self, u: VirtualUser) -> None:
        now = trio.current_time()
        for due, event in u.waiting.values():
            self.recorder.record(BET_WS, due, now, TRANSPORT, "ws_closed")
            event.set()
        u.waiting.clear()

    async def _read_until_closed(
        self, u: VirtualUser, ws: trio_websocket.WebSocketConnection, ready: Any
    ) -> None:
        try:
            await self._read(u, ws, ready)
        except trio_websocket.ConnectionClosed as e:
            code = e.reason.code if e.reason is not None else 0
            self.ws_close_codes[code] += 1

    async def _read(
        self, u: VirtualUser, ws: trio_websocket.WebSocketConnection, ready: Any
    ) -> None:
        tracker = self.tracker
        decode = frame_decoder.decode
        while True:
            raw = await ws.get_message()
            now = trio.current_time()
            if isinstance(raw, str) and raw.startswith(_IGNORED_FRAMES):
                continue  # settlements and balances: nothing to check, not worth decoding
            try:
                f = decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.counters["unparsable_frames"] += 1
                continue
            kind = f.type
            if kind in ("bet_confirmed", "bet_rejected") and f.req_id is not None:
                # the answer to our own `place_bet` sent with `"ack": "commit"`
                waiting = u.waiting.pop(f.req_id, None)
                if f.bet is not None:
                    tracker.accepted(f.bet.bet_id, now, u.index)
                    status = "confirmed" if kind == "bet_confirmed" else "rejected"
                    tracker.answered(f.bet.bet_id, status, f.reason, now)
                if waiting is not None:
                    self.recorder.record(BET_WS, waiting[0], now, 201)
                    waiting[1].set()
            elif kind == "bet_confirmed" and f.bet is not None:
                tracker.answered(f.bet.bet_id, "confirmed", None, now)
            elif kind == "bet_ack" and f.req_id is not None:
                waiting = u.waiting.pop(f.req_id, None)
                if f.bet is not None:
                    tracker.accepted(f.bet.bet_id, now, u.index)
                if waiting is not None:
                    self.recorder.record(BET_WS, waiting[0], now, 202)
                    waiting[1].set()
            elif kind == "bet_rejected" and f.bet is not None:
                tracker.answered(f.bet.bet_id, "rejected", f.reason, now)
            elif kind == "error":
                code = f.error.code if f.error is not None else "unknown"
                waiting = u.waiting.pop(f.req_id, None) if f.req_id is not None else None
                if waiting is not None:
                    self.recorder.record(BET_WS, waiting[0], now, CODE_STATUS.get(code, 400), code)
                    waiting[1].set()
                elif ready is not None:
                    raise SetupError(f"WebSocket of {u.address}: error {code} during setup")
                else:
                    self.counters[f"ws_error:{code}"] += 1
            elif kind == "price":
                if self.on_price is not None:
                    self.on_price(f, now)
            elif kind == "grid":
                assert self.market is not None
                self.market.update(f.as_of or 0, f.cells or [], f.breaker)
            elif kind == "pong" and f.req_id == _READY:
                u.connected.set()
                u.ever_connected = True
                if ready is not None:
                    ready.started()
                    ready = None

    async def _resync(self, u: VirtualUser) -> None:
        """Ask over HTTP for this user's bets that were waiting for an answer when the WebSocket
        dropped (API.md: account messages are never dropped silently; the client resyncs)."""
        await u.connected.wait()
        conn = self.target.connection()
        try:
            for bet_id in self.tracker.pending_of(u.index):
                try:
                    with trio.fail_after(self.timeout):
                        resp = await conn.request(
                            "GET", f"/api/bets/{bet_id}", b"", _JSON_HEADER + u.auth_header()
                        )
                except (trio.TooSlowError, HttpError, OSError, trio.BrokenResourceError):
                    self.counters["resync_failures"] += 1
                    continue
                if resp.status != 200:
                    continue
                bet = bet_decoder.decode(resp.body)
                if bet.status == "rejected":
                    self.tracker.resync(bet_id, "rejected", bet.reason, trio.current_time())
                elif bet.status != "pending":
                    self.tracker.resync(bet_id, "confirmed", None, trio.current_time())
        finally:
            conn.close()

    # ── signing ahead ─────────────────────────────────────────────────────────────────────

    def depth(self) -> int:
        per_user = self.rate / max(1, len(self.users))
        return min(_MAX_DEPTH, math.ceil(per_user * self.lead_s) + 1)

    def _next_cell(self, u: VirtualUser, cands: list[Any]) -> Any:
        n = len(cands)
        for step in range(n):
            cell = cands[(u.cursor + step) % n]
            if cell.cell_id not in u.used:
                u.cursor += step + 1
                return cell
        return None

    def _drop_aging(self, u: VirtualUser, now_ms: int) -> None:
        """Take back queued bets that would go stale before they are likely to be sent.

        At low rates per user a signed bet can wait many seconds for its turn; by then its cell
        may have left the good set. Dropping it here (and forgetting that its cell was used: it
        was never sent) lets the refill sign a fresh one, so `fire` always finds one to send.
        """
        assert self.market is not None
        market = self.market
        keep: deque[PreparedBet] = deque()
        for bet in u.ready:
            if now_ms - bet.timestamp < _REFRESH_AFTER_MS and market.still_placeable(
                bet.cell_id, bet.t_start, now_ms + 1500
            ):
                keep.append(bet)
            else:
                u.used.pop(bet.cell_id, None)
                self.counters["re_signed"] += 1
        u.ready = keep

    async def presign_once(self, signer: Signer) -> int:
        """Top every user's queue of signed bets up to `depth()`; returns how many were signed."""
        assert self.market is not None
        now_ms = wall_ms()
        cands = self.market.candidates(now_ms)
        if not cands:
            self.counters["no_placeable_cells"] += 1
            return 0
        depth = self.depth()
        for u in self.users:
            if u.ready:
                self._drop_aging(u, now_ms)
        ws_share = self._ws_share()
        items: list[tuple[int, bytes]] = []
        metas: list[tuple[VirtualUser, Any, str, bool]] = []
        for u in self.users:
            for _ in range(depth - len(u.ready)):
                cell = self._next_cell(u, cands)
                if cell is None:
                    self.counters["user_out_of_cells"] += 1
                    break
                u.used[cell.cell_id] = cell.t_end
                u.seq += 1
                nonce = f"{self.run_tag}-{u.index:x}-{u.seq:x}"
                items.append(
                    (
                        u.index,
                        bet_payload(
                            self.chain_id, u.address, cell.cell_id, self.stake, nonce, now_ms, 0
                        ),
                    )
                )
                metas.append((u, cell, nonce, self.rng.random() < ws_share))
        if not items:
            return 0
        signatures = await signer.sign_payloads(items)
        for (u, cell, nonce, over_ws), sig in zip(metas, signatures, strict=True):
            u.ready.append(self._encode(cell, nonce, now_ms, over_ws, sig))
        return len(items)

    def _encode(self, cell: Any, nonce: str, now_ms: int, over_ws: bool, sig: str) -> PreparedBet:
        if over_ws:
            data = _json.encode(
                WsPlaceBet(
                    req_id=nonce,
                    cell_id=cell.cell_id,
                    amount=self.stake,
                    nonce=nonce,
                    timestamp=now_ms,
                    chain_id=self.chain_id,
                    signature=sig,
                    ack="commit",  # one answer after the commit (API.md v1.1), no bet_ack
                )
            )
        else:
            data = _json.encode(
                BetRequest(
                    cell_id=cell.cell_id,
                    amount=self.stake,
                    nonce=nonce,
                    timestamp=now_ms,
                    chain_id=self.chain_id,
                    signature=sig,
                )
            )
        return PreparedBet(cell.cell_id, cell.t_start, nonce, now_ms, over_ws, data)

    def _ws_share(self) -> float:
        spec = self.spec
        if spec.transport == "ws":
            return 1.0
        return spec.ws_share if spec.transport == "mixed" else 0.0

    def sign_inline(self, u: VirtualUser, now_ms: int) -> PreparedBet | None:
        """A bet signed here and now, for a user whose queue ran dry (the refill fell behind).

        The fallback keeps the arrival instead of dropping it; it costs the event loop one
        Ed25519 signature (≈ 20 µs), and `signed_inline` counts how often it happened so a
        presigner that cannot keep up is visible in the report, not hidden by this.
        """
        assert self.market is not None
        cell = self._next_cell(u, self.market.candidates(now_ms))
        if cell is None:
            return None
        if u.signing_key is None:
            u.signing_key = SigningKey(derive_secret(self.signer_seed, b"session", u.index))
        u.used[cell.cell_id] = cell.t_end
        u.seq += 1
        nonce = f"{self.run_tag}-{u.index:x}-{u.seq:x}"
        payload = bet_payload(self.chain_id, u.address, cell.cell_id, self.stake, nonce, now_ms, 0)
        sig = u.signing_key.sign(payload).signature.hex()
        self.counters["signed_inline"] += 1
        return self._encode(cell, nonce, now_ms, self.rng.random() < self._ws_share(), sig)

    def forget_past_cells(self, now_ms: int) -> None:
        """Cells whose window has ended can never be offered again: stop remembering them."""
        for u in self.users:
            if len(u.used) > 256:
                u.used = {c: end for c, end in u.used.items() if end > now_ms}

    async def presign(self, signer: Signer) -> None:
        """Keep signing ahead for as long as the run lasts (every 100 ms, and never mid-tap)."""
        last_prune = 0
        while True:
            await self.presign_once(signer)
            now_ms = wall_ms()
            if now_ms - last_prune > 5000:
                self.forget_past_cells(now_ms)
                last_prune = now_ms
            await trio.sleep(0.1)

    async def watch_grid(self) -> None:
        """Fall back to `GET /api/grid` when no WebSocket grid arrived for 2 s."""
        assert self.market is not None
        conn = self.target.connection()
        seen = self.market.updates
        quiet_since = trio.current_time()
        try:
            while True:
                await trio.sleep(0.5)
                if self.market.updates != seen:
                    seen = self.market.updates
                    quiet_since = trio.current_time()
                elif trio.current_time() - quiet_since > 2.0:
                    try:
                        await self.poll_grid(conn)
                        self.counters["grid_polls"] += 1
                    except SetupError:
                        self.counters["grid_poll_failures"] += 1
                    seen = self.market.updates
                    quiet_since = trio.current_time()
        finally:
            conn.close()

    # ── one tap ───────────────────────────────────────────────────────────────────────────

    async def fire(self, u: VirtualUser, due: float) -> None:
        """Send the user's next signed bet; the request was due at `due` (trio seconds)."""
        assert self.market is not None
        now_ms = wall_ms()
        bet, stale = u.take(now_ms, self.market)
        if stale:
            self.counters["stale_signed"] += stale
        if bet is None:
            bet = self.sign_inline(u, now_ms)
        if bet is None:
            self.recorder.short("no_placeable_cell", due)
            return
        if bet.over_ws:
            await self._place_ws(u, bet, due)
        else:
            await self._place_http(u, bet, due)

    async def _place_http(self, u: VirtualUser, bet: PreparedBet, due: float) -> None:
        try:
            with trio.fail_after(self.timeout):
                resp = await u.http.send(u.bet_head, bet.data)
        except trio.TooSlowError:
            self.recorder.record(BET_HTTP, due, trio.current_time(), TRANSPORT, "timeout")
            return
        except (HttpError, OSError, trio.BrokenResourceError) as e:
            self.recorder.record(BET_HTTP, due, trio.current_time(), TRANSPORT, type(e).__name__)
            return
        now = trio.current_time()
        if resp.status in (201, 202):
            try:
                accepted = bet_decoder.decode(resp.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.recorder.record(BET_HTTP, due, now, resp.status, "unparsable_body")
                return
            self.recorder.record(BET_HTTP, due, now, resp.status)
            if resp.status == 202:
                self.tracker.accepted(accepted.bet_id, now, u.index)
        else:
            self.recorder.record(BET_HTTP, due, now, resp.status, error_code(resp.body))

    async def _place_ws(self, u: VirtualUser, bet: PreparedBet, due: float) -> None:
        ws = u.ws
        if ws is None:
            self.recorder.record(BET_WS, due, trio.current_time(), TRANSPORT, "ws_down")
            return
        event = trio.Event()
        u.waiting[bet.nonce] = (due, event)
        try:
            await ws.send_message(bet.data.decode())
        except trio_websocket.ConnectionClosed:
            if u.waiting.pop(bet.nonce, None) is not None:
                self.recorder.record(BET_WS, due, trio.current_time(), TRANSPORT, "ws_closed")
            return
        with trio.move_on_after(self.timeout):
            await event.wait()
        if u.waiting.pop(bet.nonce, None) is not None:
            self.recorder.record(BET_WS, due, trio.current_time(), TRANSPORT, "timeout")

    # ── the run's end ─────────────────────────────────────────────────────────────────────

    async def drain(self, seconds: float) -> None:
        """Wait (at most `seconds`) until every accepted bet has been answered."""
        for _ in range(max(1, round(seconds / 0.05))):
            if not self.tracker.unanswered:
                return
            await trio.sleep(0.05)

    def close(self) -> None:
        self.stopping = True
        for u in self.users:
            u.http.close()

    def summary(self) -> dict[str, Any]:
        return {
            "users": len(self.users),
            "stake": self.stake,
            "chain_id": self.chain_id,
            "counters": dict(self.counters),
            "ws_close_codes": {str(k): v for k, v in self.ws_close_codes.items()},
        }
