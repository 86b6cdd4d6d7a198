"""What the edge's handlers call: one object holding the process's handles, built by the supervisor.

It translates between HTTP/WS requests and the actors: the bet desk, the session book, the
writer's queue and its committed-event waiters, the read-only store, the market and breaker
handles, the hub and the hot state. Handlers stay routing-only; this is where "wait for the commit
of my deposit" or "was the override published?" are answered, for the auth, bets, money and admin
routes and the WebSocket client. How healthy the process is (`/readyz`, `/healthz`, the gauges)
is `tap.edge.health`'s, which reads the same handles; the fields only it reads
(`writer_depth`, `redis_configured`, `core_alive`, `stopping`) stay here because the supervisor
hands every handle over in this one object.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec
import trio

from tap.admission import verify_withdrawal
from tap.config import Config
from tap.edge.desk import BetDesk, WriterSender, bet_id_for, signed_request_error
from tap.errors import ApiError
from tap.hotstate import HotState, HotStateUnavailable
from tap.messages import (
    AdminCredit,
    Bet,
    BreakerMode,
    Committed,
    Deposit,
    EntryPosted,
    GridView,
    LedgerEntry,
    Tick,
    Withdrawal,
    WithdrawalRequest,
    WsBalance,
    WsBreaker,
    WsGrid,
)
from tap.pending import PendingBets
from tap.runtime.clock import Clock
from tap.sessions import Session, SessionBook

R = TypeVar("R")
# No amount beyond what JSON numbers carry exactly ever reaches the ledger (SQLite holds 2⁶³−1).
MAX_AMOUNT = 2**53 - 1


class Reader(Protocol):
    """Read-only queries on the ledger database (run off the event loop by the implementation)."""

    async def bet(self, bet_id: str) -> Bet | None: ...
    async def bet_by_nonce(self, address: str, nonce: str) -> Bet | None: ...
    async def bets(
        self, address: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Bet], str | None]: ...
    async def balance(self, address: str) -> tuple[int, int]: ...
    async def ledger(
        self, address: str, limit: int, cursor: str | None
    ) -> tuple[list[LedgerEntry], str | None]: ...
    async def ticks(
        self, symbol: str, start: int, end: int, limit: int
    ) -> tuple[list[Tick], int | None]: ...
    async def ping(self) -> bool: ...


class Commits(Protocol):
    """Where a request's verdict is awaited (the committed fan-out, `actors.batcher`): register
    *before* handing the request over, so the answer cannot slip past."""

    def expect_bet(self, bet_id: str) -> AbstractContextManager[Waiter]: ...
    def expect_entry(self, ref: str) -> AbstractContextManager[Waiter]: ...


class Waiter(Protocol):
    async def wait(self) -> Committed: ...


class MarketHandle(Protocol):
    def grid(self, symbol: str) -> GridView | None: ...
    def last_tick(self, symbol: str) -> Tick | None: ...


class HubLike(Protocol):
    def connect(self) -> Any: ...
    def disconnect(self, sub: Any) -> None: ...


@dataclass
class EdgeServices:
    cfg: Config
    clock: Clock
    sessions: SessionBook
    desk: BetDesk
    pending: PendingBets
    hot: HotState
    writer: WriterSender
    fanout: Commits
    reader: Reader
    market: MarketHandle
    breaker_state: Callable[[str], str]  # symbol → "open" | "closed"
    breaker_reason: Callable[[str], str]
    override_breaker_fn: Callable[[BreakerMode], Any]
    hub: HubLike
    stopping: trio.Event
    admin_token: str | None
    archive_fn: Callable[[], Any] | None = None
    integrity_fn: Callable[[], Any] | None = None
    writer_depth: Callable[[], tuple[int, int]] = lambda: (0, 0)
    writer_alive: Callable[[], bool] = lambda: True
    redis_configured: bool = False
    # An edge of a scale-out deployment: is the core heard (its heartbeat within
    # `bus.core_silence_ms`)? None in the one-process server, where the core is this process.
    core_alive: Callable[[], bool] | None = None
    _refs: int = field(default=0)

    # ── auth ───────────────────────────────────────────────────────────────────────────────

    async def login(self, message: str, signature: str, now: int) -> Session:
        """The one login path (`SessionBook.login`), claiming the challenge in this process's
        hot state: Redis when configured, so every edge sees every claim."""
        return await self.sessions.login(message, signature, now, claim_once=self.hot.claim_once)

    # ── bets ───────────────────────────────────────────────────────────────────────────────

    async def wait_for_bet(self, bet_id: str, timeout_s: float) -> Bet | None:
        """The committed (confirmed or rejected) bet, or None if `timeout_s` passed first.

        Called right after the desk's `send_nowait` with no checkpoint in between, so the
        writer cannot have published the answer before the waiter is registered."""
        deadline = trio.current_time() + timeout_s
        with self.fanout.expect_bet(bet_id) as waiter:
            # Checked every half second: a writer that died will never answer, so the caller
            # hears None at once instead of at the deadline.
            while self.writer_alive() and trio.current_time() < deadline:
                with trio.move_on_after(min(0.5, deadline - trio.current_time())):
                    answer = await waiter.wait()
                    bet: Bet = answer.bet  # type: ignore[union-attr]
                    return bet
        return None

    async def bet(self, bet_id: str) -> Bet | None:
        # The ledger first: ledger-sync drops a pending entry only when it reaches that commit,
        # which under load is after the 201 went out. The pending entry is taken before the
        # read, so a commit (and its drop) between the two still finds the bet in the ledger.
        pending = self.pending.get(bet_id)
        stored = await self._read(self.reader.bet(bet_id))
        return stored if stored is not None else pending

    async def bet_by_nonce(self, address: str, nonce: str) -> Bet | None:
        pending = self.pending.get(bet_id_for(address, nonce))
        stored = await self._read(self.reader.bet_by_nonce(address, nonce))
        return stored if stored is not None else pending

    async def list_bets(
        self, address: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Bet], str | None]:
        return await self._read(self.reader.bets(address, status, limit, cursor))

    async def balance(self, address: str) -> tuple[int, int]:
        return await self._read(self.reader.balance(address))

    async def ledger(
        self, address: str, limit: int, cursor: str | None
    ) -> tuple[list[LedgerEntry], str | None]:
        return await self._read(self.reader.ledger(address, limit, cursor))

    async def ticks(
        self, symbol: str, start: int, end: int, limit: int
    ) -> tuple[list[Tick], int | None]:
        return await self._read(self.reader.ticks(symbol, start, end, limit))

    async def _read(self, aw: Awaitable[R]) -> R:
        try:
            return await aw
        except ValueError as e:  # a malformed cursor and the like
            raise ApiError("invalid_request", str(e)) from None

    def grid(self, symbol: str) -> GridView | None:
        return self.market.grid(symbol)

    # ── money ──────────────────────────────────────────────────────────────────────────────

    def _ref(self, kind: str) -> str:
        return f"{kind}-{secrets.token_hex(10)}"

    async def _post_and_wait(self, request: Any, ref: str) -> EntryPosted:
        posted = None
        with self.fanout.expect_entry(ref) as waiter:
            try:
                self.writer.send_nowait(request)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                raise ApiError("overloaded", "the ledger queue is full", retry_after_s=1) from None
            with trio.move_on_after(10.0):
                posted = await waiter.wait()
        if not isinstance(posted, EntryPosted):
            # Queued but not committed in 10 s: the writer is stalled; the request may still land.
            raise ApiError("dependency_unavailable", "ledger did not commit in time", ref=ref)
        return posted

    async def deposit(self, address: str, amount: int) -> LedgerEntry:
        ref = self._ref("dep")
        posted = await self._post_and_wait(
            Deposit(address=address, amount=amount, ref=ref, at=self.clock.now_ms()), ref
        )
        if posted.entry is None:
            raise ApiError(posted.error or "invalid_request", "deposit refused")
        return posted.entry

    async def withdraw(self, session: Session, req: WithdrawalRequest) -> LedgerEntry:
        """Check the signed withdrawal, hold its amount in the hot state, post it, wait for the
        commit.

        The hold comes before the ledger so two withdrawals racing on two edges cannot both
        spend one balance. A queue that refused the request gives the hold and the nonce back
        (nothing was posted); a ledger that refused it gives the hold back but keeps the nonce
        burned (the signed request was seen). Redis unreachable on release is the safe
        direction: the hold stays until the balance cache is rebuilt from the ledger."""
        now = self.clock.now_ms()
        if not 0 < req.amount <= MAX_AMOUNT:
            raise ApiError("amount_out_of_range", f"amount must be within 1..{MAX_AMOUNT}")
        refusal = verify_withdrawal(
            now,
            chain_id=self.cfg.auth.chain_id,
            max_skew_ms=self.cfg.auth.max_skew_ms,
            session_key=self.desk.verifier(session),
            address=session.address,
            withdrawal=req,
        )
        if refusal is not None:
            raise signed_request_error(refusal, self.cfg, now)
        try:
            admit = await self.hot.admit_withdrawal(session.address, req.nonce, req.amount, now)
        except HotStateUnavailable:
            raise ApiError(
                "dependency_unavailable", "hot state unavailable", retry_after_s=1
            ) from None
        if not admit.ok:
            raise ApiError(admit.reason or "invalid_request", f"withdrawal refused: {admit.reason}")
        ref = f"wd-{session.address}-{req.nonce}"
        request = Withdrawal(
            address=session.address, amount=req.amount, nonce=req.nonce, ref=ref, at=now
        )
        try:
            posted = await self._post_and_wait(request, ref)
        except ApiError as err:
            if err.code == "overloaded":
                await self._release(session.address, req.amount, nonce=req.nonce)
            raise
        if posted.entry is None:
            await self._release(session.address, req.amount, held_by=req.nonce)  # stays burned
            code = posted.error or "insufficient_funds"
            raise ApiError(code, f"withdrawal refused: {code}")
        return posted.entry

    async def _release(
        self, address: str, amount: int, nonce: str | None = None, held_by: str | None = None
    ) -> None:
        try:
            await self.hot.release(address, amount, nonce=nonce, held_by=held_by)
        except HotStateUnavailable:
            pass  # safe direction: the hold stays until the balance cache is rebuilt

    async def admin_credit(self, address: str, amount: int, reason: str) -> LedgerEntry:
        ref = self._ref("adj")
        posted = await self._post_and_wait(
            AdminCredit(
                address=address, amount=amount, reason=reason, ref=ref, at=self.clock.now_ms()
            ),
            ref,
        )
        if posted.entry is None:
            code = posted.error or "insufficient_funds"
            raise ApiError(code, f"adjustment refused: {code}")
        return posted.entry

    # ── breaker, archive, integrity ────────────────────────────────────────────────────────

    async def override_breaker(self, mode: BreakerMode) -> None:
        try:
            result = self.override_breaker_fn(mode)
            if hasattr(result, "__await__"):
                await result
        except HotStateUnavailable:
            raise ApiError(
                "dependency_unavailable",
                "Redis is unavailable; the override was not published",
                retry_after_s=1,
            ) from None

    async def run_archive(self) -> Any:
        if self.archive_fn is None:
            raise ApiError("not_found", "archiving is not available in this process")
        return await self.archive_fn()

    async def integrity(self) -> list[str]:
        if self.integrity_fn is None:
            raise ApiError("not_found", "integrity check is not available in this process")
        result: list[str] = await self.integrity_fn()
        return result

    # ── WebSocket helpers ──────────────────────────────────────────────────────────────────

    def check_channels(self, channels: list[str], *, authed: bool) -> tuple[str, str] | None:
        for ch in channels:
            kind, _, symbol = ch.partition(":")
            if ch == "account":
                if not authed:
                    return ("unauthorized", "subscribe to account after auth")
            elif kind in ("prices", "grid") and self.cfg.market(symbol) is not None:
                continue
            else:
                return ("invalid_request", f"unknown channel {ch!r}")
        return None

    def send_snapshots(self, sub: Any, channels: list[str], session: Session | None) -> None:
        """Fresh subscribers get the current grid and breaker state at once, not after 1 s.

        `channels` are distinct (the caller dedupes and caps them): one snapshot per channel.
        Building a grid frame is the expensive part, so nothing is built for a client the hub
        has already marked for close (e.g. 1013: its queue overflowed)."""
        for ch in channels:
            if sub.close_code is not None:
                return
            kind, _, symbol = ch.partition(":")
            if kind == "grid":
                view = self.market.grid(symbol)
                if view is not None:
                    sub.send_direct(_encode(WsGrid(**msgspec.structs.asdict(view))))
                sub.send_direct(
                    _encode(
                        WsBreaker(
                            state=self.breaker_state(symbol),  # type: ignore[arg-type]
                            reason=self.breaker_reason(symbol),
                        )
                    )
                )

    async def balance_frame(self, address: str) -> str:
        available, locked = await self.balance(address)
        return _encode(WsBalance(available=available, locked=locked))


_frame_encoder = msgspec.json.Encoder()


def _encode(frame: Any) -> str:
    return _frame_encoder.encode(frame).decode()
