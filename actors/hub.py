"""The WebSocket fan-out: server frames to every connected client without ever waiting for one.

It decides what each client is sent and what a slow client loses (DESIGN rule 4, after piker's
`sample_and_broadcast`); it leaves the socket to the edge, whose per-client writer task loops on
`Subscriber.next_frames()`, sends the frames it gets and closes the socket with the code it
gets.

Per client there are two outbound queues, both bounded:

- **market data** (`price`, `grid`): one slot per channel ("prices:BTC-USD", "grid:BTC-USD").
  A newer frame replaces the unsent one (counted in `tap_ws_dropped_frames_total`): a lagging
  client gets the latest price late, never a backlog of stale ones, and its memory is bounded by
  its subscriptions. API.md: "the newest replaces the unsent".
- **account** frames (bet_confirmed/rejected/resolved, balance, breaker, and direct replies:
  bet_ack, error, pong): a FIFO of `server.ws_queue` frames, never dropped. If it is full the
  client is too far behind to be told the truth in order, so it is marked for close with 1013
  ("try again later", counted in `tap_ws_overflow_closes_total`); it resyncs over HTTP.

A committed bet is one frame: `bet_confirmed` / `bet_rejected` / `bet_resolved` carry the
account's balance after that event; a standalone `balance` frame only follows deposits,
withdrawals and credits. A `place_bet` sent with `"ack": "commit"` has no `bet_ack`: the client
that sent it is registered here (`Subscriber.await_commit`) and gets the commit frame with its
`req_id`, and the address's other clients get the plain frame.

Publishing is synchronous and O(subscribers of that channel): each frame is JSON-encoded once,
and the same `str` is queued for everyone. Frames are `str` (not bytes) because API.md's frames
are text frames, and Quart sends `bytes` as binary frames; decoding once here spares every
writer a copy.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable
from typing import Literal, NamedTuple

import msgspec
import trio

from tap.errors import STATUS
from tap.messages import (
    MARKET_DATA,
    BalanceChanged,
    Bet,
    BetConfirmed,
    BetRejected,
    BetResolved,
    BreakerChanged,
    Committed,
    EntryPosted,
    ErrorBody,
    Tick,
    WsBalance,
    WsBetAck,
    WsBetConfirmed,
    WsBetRejected,
    WsBetResolved,
    WsBreaker,
    WsError,
    WsOut,
    WsPrice,
)
from tap.runtime.metrics import WS_CLIENTS, WS_DROPPED, WS_OVERFLOW_CLOSES

log = logging.getLogger(__name__)

ACCOUNT = "account"  # the channel a client subscribes to for its own account frames
OVERFLOW_CLOSE = 1013  # RFC 6455 "Try Again Later": account frames could not be queued
GOING_AWAY = 1001  # the server is shutting down
NORMAL_CLOSE = 1000


def prices_channel(symbol: str) -> str:
    return f"prices:{symbol}"


def grid_channel(symbol: str) -> str:
    return f"grid:{symbol}"


class _CommitWait(NamedTuple):
    client: Subscriber
    req_id: str
    accepted_at: int  # of the request: a commit of another request with that nonce is a replay
    ack: Literal["queue", "commit"]


class Subscriber:
    """One connected client's subscriptions and outbound queues. Made by `Hub.connect`."""

    def __init__(self, hub: Hub, ident: int, account_capacity: int) -> None:
        self.hub = hub
        self.id = ident
        self.channels: set[str] = set()
        self.address: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._capacity = account_capacity
        # Each pending frame carries the hub-wide sequence number it was queued at, so a batch
        # goes out in publication order (a replaced market frame takes its replacement's place).
        self._market: dict[str, tuple[int, str]] = {}
        self._account: deque[tuple[int, str]] = deque()
        self._wake = trio.Event()
        self._commit_waits: set[str] = set()  # bet_ids of this client's `ack: commit` bets

    # ── what the edge calls after its WS handshake / on client messages ──────────────────────

    def subscribe(self, channels: Iterable[str]) -> None:
        for channel in channels:
            if channel not in self.channels:
                self.channels.add(channel)
                self.hub._by_channel.setdefault(channel, set()).add(self)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop delivery on `channels`, including market frames queued but not yet sent."""
        for channel in channels:
            if channel in self.channels:
                self.channels.discard(channel)
                self.hub._leave(self.hub._by_channel, channel, self)
                self._market.pop(channel, None)

    def set_address(self, address: str | None) -> None:
        """Route `address`'s account frames here (after WS auth); None stops routing."""
        if self.address is not None:
            self.hub._leave(self.hub._by_address, self.address, self)
        self.address = address.lower() if address is not None else None
        if self.address is not None:
            self.hub._by_address.setdefault(self.address, set()).add(self)

    def can_await_commit(self) -> bool:
        """Room for one more bet in flight on this connection (ask before placing it)."""
        return len(self._commit_waits) < self._capacity

    def await_commit(self, bet: Bet, req_id: str, *, ack: Literal["queue", "commit"]) -> None:
        """Answer the `place_bet` that queued `bet` once its commit is known (call it right
        after the desk handed the bet to the writer, with no checkpoint in between, so the
        commit cannot slip past). A WebSocket acknowledgement is only ever sent for a bet that
        is durable: with `ack="queue"` the client gets `bet_ack` and then, if subscribed to
        `account`, the commit frame; with `ack="commit"` the commit frame alone, carrying
        `req_id`. A writer's refusal is an `error` frame with `req_id` in both modes."""
        self._commit_waits.add(bet.bet_id)
        self.hub._commit_waits.setdefault(bet.bet_id, []).append(
            _CommitWait(self, req_id, bet.accepted_at, ack)
        )

    def send(self, frame: WsOut) -> None:
        """Queue a direct reply to this client (bet_ack, error, pong): an account frame."""
        self._offer_account(self.hub.encode(frame))

    def send_direct(self, frame: str) -> None:
        """`send` for a frame the caller already encoded (a JSON text frame)."""
        self._offer_account(frame)

    def close(self, code: int, reason: str) -> None:
        """Mark for close: the writer's next `next_frames` returns `([], code)`. Frames not yet
        taken are discarded: a client closed for overflow resyncs over HTTP."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._market.clear()
            self._account.clear()
            self._wake.set()

    # ── what the per-client writer task calls ────────────────────────────────────────────────

    async def next_frames(self) -> tuple[list[str], int | None]:
        """Wait until there is something to do; return `(frames, close_code)`.

        `frames` is everything pending, oldest first, for the writer to send; `close_code` is
        None while the client stays open, else the code to close it with (then `frames` is
        empty and `close_reason` says why). Nothing is awaited between taking the frames and
        returning them, so a cancelled wait loses nothing.
        """
        while True:
            if self.close_code is not None:
                return [], self.close_code
            if self._market or self._account:
                batch = sorted([*self._market.values(), *self._account])
                self._market.clear()
                self._account.clear()
                return [frame for _, frame in batch], None
            self._wake = trio.Event()
            await self._wake.wait()

    @property
    def pending(self) -> int:
        """Frames queued and not yet taken by the writer."""
        return len(self._market) + len(self._account)

    # ── what the hub calls ───────────────────────────────────────────────────────────────────

    def _offer_market(self, channel: str, seq: int, frame: str) -> None:
        if self.close_code is not None:
            return
        if channel in self._market:
            WS_DROPPED.inc()
        self._market[channel] = (seq, frame)
        self._wake.set()

    def _offer_account(self, frame: str, seq: int | None = None) -> None:
        if self.close_code is not None:
            return
        if len(self._account) >= self._capacity:
            WS_OVERFLOW_CLOSES.inc()
            log.info(
                "hub: client %d fell %d account frames behind; closing", self.id, self._capacity
            )
            self.close(OVERFLOW_CLOSE, "too far behind; resync over HTTP")
            return
        self._account.append((next(self.hub._seq) if seq is None else seq, frame))
        self._wake.set()


class Hub:
    """Every connected client, indexed by channel and by account address.

    Synchronous on purpose: publishing never awaits, so no client can slow a publisher.
    `ws_queue` is each client's account-frame capacity (`server.ws_queue`).
    """

    def __init__(self, ws_queue: int) -> None:
        if ws_queue < 1:
            raise ValueError(f"ws_queue must be at least 1, got {ws_queue}")
        self.ws_queue = ws_queue
        self._subscribers: set[Subscriber] = set()
        self._by_channel: dict[str, set[Subscriber]] = {}
        self._by_address: dict[str, set[Subscriber]] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._encoder = msgspec.json.Encoder()
        self._commit_waits: dict[str, list[_CommitWait]] = {}  # bet_id → placing clients

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    def encode(self, frame: WsOut) -> str:
        return self._encoder.encode(frame).decode()

    def connect(self) -> Subscriber:
        subscriber = Subscriber(self, next(self._ids), self.ws_queue)
        self._subscribers.add(subscriber)
        WS_CLIENTS.set(len(self._subscribers))
        return subscriber

    def disconnect(self, subscriber: Subscriber) -> None:
        """Forget a client (idempotent); a writer still waiting is told to close (1000)."""
        subscriber.unsubscribe(list(subscriber.channels))
        subscriber.set_address(None)
        for bet_id in subscriber._commit_waits:
            waits = [w for w in self._commit_waits.get(bet_id, ()) if w.client is not subscriber]
            if waits:
                self._commit_waits[bet_id] = waits
            else:
                self._commit_waits.pop(bet_id, None)
        subscriber._commit_waits.clear()
        subscriber.close(NORMAL_CLOSE, "disconnected")
        self._subscribers.discard(subscriber)
        WS_CLIENTS.set(len(self._subscribers))

    def publish(self, channel: str, frame: WsOut) -> None:
        """Queue `frame` for every subscriber of `channel`.

        Market data (`price`, `grid`) is coalesced per channel; any other frame type is queued
        as an account frame (never dropped).
        """
        subscribers = self._by_channel.get(channel)
        if not subscribers:
            return
        data = self.encode(frame)
        seq = next(self._seq)
        if isinstance(frame, MARKET_DATA):
            for s in subscribers:
                s._offer_market(channel, seq, data)
        else:
            for s in list(subscribers):
                s._offer_account(data, seq)

    def publish_account(
        self, address: str, frame: WsOut, *, skip: Subscriber | None = None
    ) -> None:
        """Queue `frame` for the clients authenticated as `address` and subscribed to
        "account" (but `skip`, which was answered already)."""
        targets = [
            s
            for s in self._by_address.get(address.lower(), ())
            if ACCOUNT in s.channels and s is not skip
        ]
        if targets:
            data = self.encode(frame)
            seq = next(self._seq)
            for s in targets:
                s._offer_account(data, seq)

    def publish_committed(self, event: Committed) -> None:
        """Route one committed event: its frame to the address's `account` clients, and the
        answer to the `place_bet` that queued it (see `Subscriber.await_commit`) to its client
        (which, for `ack="commit"`, is not also sent the plain frame)."""
        routed = account_frame(event)
        if routed is None:
            return
        address, frame = routed
        answered = None
        if isinstance(frame, WsBetConfirmed | WsBetRejected):
            bet_id = frame.bet.bet_id
            for wait in self._commit_waits.pop(bet_id, ()):
                wait.client._commit_waits.discard(bet_id)
                answer = _answer(frame, wait)
                wait.client.send(answer)
                if not isinstance(answer, WsError | WsBetAck):
                    answered = wait.client  # its one answer was the commit frame itself
        self.publish_account(address, frame, skip=answered)

    def broadcast(self, frame: WsOut) -> None:
        """Queue `frame` as an account frame for every connected client (breaker changes)."""
        data = self.encode(frame)
        seq = next(self._seq)
        for s in list(self._subscribers):
            s._offer_account(data, seq)

    def close_all(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        for s in self._subscribers:
            s.close(code, reason)

    @staticmethod
    def _leave(index: dict[str, set[Subscriber]], key: str, subscriber: Subscriber) -> None:
        members = index.get(key)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del index[key]


def _answer(frame: WsBetConfirmed | WsBetRejected, wait: _CommitWait) -> WsOut:
    """What the client that placed a bet over WebSocket hears once the writer has answered."""
    bet = frame.bet
    if bet.accepted_at != wait.accepted_at:
        # The ledger answered with the bet an earlier request with this nonce made (the hot
        # state had forgotten the nonce): this request is a replay, nothing of it took effect.
        return WsError(
            req_id=wait.req_id, error=ErrorBody(code="replayed_nonce", message="nonce already used")
        )
    if isinstance(frame, WsBetRejected):
        code = frame.reason if frame.reason in STATUS else "invalid_request"
        if wait.ack == "commit":
            return msgspec.structs.replace(frame, req_id=wait.req_id)
        return WsError(
            req_id=wait.req_id,
            error=ErrorBody(code=code, message=f"the writer refused the bet: {frame.reason}"),
        )
    if wait.ack == "commit":
        return msgspec.structs.replace(frame, req_id=wait.req_id)
    pending = msgspec.structs.replace(bet, status="pending", confirmed_at=None)
    return WsBetAck(req_id=wait.req_id, bet=pending)


def account_frame(event: Committed) -> tuple[str, WsOut] | None:
    """The WS frame a committed event becomes, and the address it is for (None: not for WS;
    `EntryPosted` answers the HTTP call that asked for it, its balance change comes separately)."""
    match event:
        case BetConfirmed(bet=bet, balance=balance):
            return bet.address, WsBetConfirmed(bet=bet, balance=balance)
        case BetRejected(bet=bet, reason=reason, balance=balance):
            return bet.address, WsBetRejected(bet=bet, reason=reason, balance=balance)
        case BetResolved(bet=bet, balance=balance):
            return bet.address, WsBetResolved(bet=bet, balance=balance)
        case BalanceChanged(address=address, available=available, locked=locked):
            return address, WsBalance(available=available, locked=locked)
        case EntryPosted():
            return None
    return None


async def run(
    hub: Hub,
    committed: trio.MemoryReceiveChannel[Committed],
    breaker_states: trio.MemoryReceiveChannel[BreakerChanged],
    *,
    ticks: trio.MemoryReceiveChannel[Tick] | None = None,
    task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Turn committed events into account frames, breaker changes into `breaker` frames for
    everyone and (if given) ticks into `price` frames on "prices:{symbol}". Starts with the hub;
    returns when every input has ended."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_forward_committed, hub, committed)
        nursery.start_soon(_forward_breaker, hub, breaker_states)
        if ticks is not None:
            nursery.start_soon(_forward_ticks, hub, ticks)
        task_status.started(hub)


# Committed events the hub publishes per scheduling round. A column's end settles every bet on
# it in one commit: thousands of `bet_resolved` frames at once. Published in one go, every client
# writer woke in the same round, and the round (each writer sending its frames) held the event
# loop for 40–100 ms at 200–250 bets/s: every bet arriving then waited it out, once per task step
# it takes (≈ 23). In rounds of this many the loop reads and serves requests in between; a yield
# per event instead would cap the hub at one event per round (it lagged seconds behind, issue 12).
# 16 rather than 64: the rounds of ≥ 15 ms in the 0.6 s after a column end at 200 bets/s fell
# from 15 and 5 to 8 and 3 (two interleaved pairs, docs/benchmarks.md third pass); the frames
# still go out within the same ≈ 0.7 s.
EVENTS_PER_ROUND = 16


async def _forward_committed(hub: Hub, committed: trio.MemoryReceiveChannel[Committed]) -> None:
    async for event in committed:
        hub.publish_committed(event)
        published = 1
        while True:  # the rest of what is queued, EVENTS_PER_ROUND per round
            if published >= EVENTS_PER_ROUND:
                await trio.lowlevel.checkpoint()
                published = 0
            try:
                hub.publish_committed(committed.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            published += 1


async def _forward_breaker(
    hub: Hub, breaker_states: trio.MemoryReceiveChannel[BreakerChanged]
) -> None:
    async for change in breaker_states:
        hub.broadcast(WsBreaker(state=change.state, reason=change.reason))


async def _forward_ticks(hub: Hub, ticks: trio.MemoryReceiveChannel[Tick]) -> None:
    async for tick in ticks:
        hub.publish(
            prices_channel(tick.symbol), WsPrice(symbol=tick.symbol, ts=tick.ts, price=tick.price)
        )
