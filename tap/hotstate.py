"""The hot state admission consults: nonces, rate tokens, cell markers, spendable balances — and
the login claims that make each challenge single use.

`HotState` is the seam between the edge and where this state lives: `InMemoryHotState` (one
process, the embedded default, defined here because it is pure) and `RedisHotState`
(`tap/store/redis_hot.py`, shared by many edge processes). Both answer the same questions with the
same reason codes, and both may be stale only in the safe direction: the hot balance never exceeds
what the ledger would allow, because the writer's conditional update is the final authority
(DESIGN rules 5–6).

Balance bookkeeping, in `delta`s of *spendable* units:
- `admit_bet` / `admit_withdrawal` reserve (−amount) before the writer sees the request;
- the writer refusing it → `release` (+amount, and the cell marker is cleared);
- a commit that adds money (deposit, win payout, void refund, credit) → `credit` (+amount, with
  the ledger entry's id, so a balance seeded from a ledger read that already held it skips it);
- at startup → `rebuild` from the ledger's `available`.

Time is an argument (`now_ms`); nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

import msgspec

from tap.ratelimit import KeyedLimiter
from tap.replay import ReplayGuard

AdmitReason = Literal["replayed_nonce", "rate_limited", "duplicate_cell_bet", "insufficient_funds"]


class Admit(msgspec.Struct, frozen=True):
    """The answer to one admission: ok, or the API.md reason code (and when to retry)."""

    ok: bool
    reason: AdmitReason | None = None
    retry_after_ms: int = 0  # for rate_limited: time until the next token
    # For an admitted bet: whole rate tokens left after it, and ms until the bucket is full
    # again (the `RateLimit-Remaining` / `RateLimit-Reset` a client paces itself by).
    tokens_left: int | None = None
    full_in_ms: int = 0


ADMITTED = Admit(True)
# Live login claims one process remembers without Redis (~0.3 KB each, 30 MB at most). A claim
# follows a signed login, and every login needs a challenge (rate-limited per client), so one
# client alone cannot reach it; past it logins answer 503 until the oldest claim expires.
MAX_CLAIMS = 100_000


class HotStateUnavailable(Exception):
    """The backing store did not answer in time; admission answers 503 dependency_unavailable."""


class ClaimsFull(Exception):
    """The claim memory holds its maximum of live claims (`InMemoryHotState` only): nothing may be
    evicted (that would let a claimed name be claimed again), so the claim is refused.
    `retry_after_ms`: when the oldest claim expires."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("claim memory full")
        self.retry_after_ms = max(1, retry_after_ms)


class HotState(Protocol):
    async def admit_bet(
        self, address: str, nonce: str, cell_id: str, amount: int, now_ms: int
    ) -> Admit:
        """Atomically, in this order: rate token, nonce unseen (then remembered for at least
        2 × max_skew_ms), no bet by this address on this cell, spendable >= amount (then
        reserved). A refusal at any step leaves every earlier step undone except the rate token."""
        ...

    async def admit_withdrawal(self, address: str, nonce: str, amount: int, now_ms: int) -> Admit:
        """Nonce unseen (remembered) and spendable >= amount (reserved)."""
        ...

    async def release(
        self,
        address: str,
        amount: int,
        *,
        cell_id: str | None = None,
        nonce: str | None = None,
        held_by: str | None = None,
    ) -> None:
        """Undo a reservation the writer refused or that never reached it. With `nonce`, the nonce
        is forgotten too (the request never happened: the client may retry it, e.g. after 503).
        `held_by` names the nonce the reservation was admitted with when that nonce stays
        remembered: a store that rebuilds balances reads from it which rebuild era the hold
        belongs to, so a hold a rebuild already dropped is not given back twice."""
        ...

    async def credit(self, address: str, amount: int, *, entry_id: int | None = None) -> None:
        """Money moved by a commit (deposit, payout, refund, adjustment of either sign).

        `entry_id` is the ledger row that made the move. The credit is sent after the commit, so
        a balance built from a ledger read in between (a lazily seeded one) already holds it; a
        store that builds balances that way skips a credit its read held, by this id (the
        Redis module text, "Ledger positions"). Without one the credit is always applied."""
        ...

    async def rebuild(self, balances: Mapping[str, int]) -> None:
        """Replace every spendable balance with the ledger's `available` (startup, recovery)."""
        ...

    async def nonce_seen(self, address: str, nonce: str) -> bool: ...

    async def remember_nonces(self, used: Iterable[tuple[str, str, int]], now_ms: int) -> None:
        """Mark (address, nonce, accepted_at) as used — the ledger's recent nonces, loaded at
        startup and after the store lost its memory, so a replay inside the window is refused
        at admission (409) and not only later by the writer's UNIQUE(address, nonce)."""
        ...

    async def claim_once(self, name: str, ttl_ms: int, now_ms: int) -> bool:
        """True the first time `name` is claimed within `ttl_ms` of its claim (then it is
        remembered that long), False while an earlier claim lives. Every process sharing the
        store sees every claim: a login challenge is redeemed once however many edges it is sent
        to. Raises `HotStateUnavailable` when the store does not answer, `ClaimsFull` when it may
        remember no more."""
        ...

    async def ping(self) -> bool:
        """True when the store answers (readiness)."""
        ...

    async def aclose(self) -> None: ...


class InMemoryHotState:
    """`HotState` for one process: plain dicts, answers at once, never unavailable.

    Atomicity is free here: the methods never await, so on trio no other task runs between the
    steps of one admission. The nonce memory lasts 2 × max_skew_ms (why that suffices:
    `tap/replay.py`); the rate buckets forget idle addresses; the one-bet-per-cell markers are
    remembered for `marker_ttl_ms` and then dropped, which is safe because the writer's
    `UNIQUE(address, cell_id)` is the final authority: a marker only spares the writer a rejection.
    Pass at least how long a cell stays placeable, `(columns_ahead + 1) × column_ms`.
    Bets and withdrawals of one address share one nonce namespace. Claims (`claim_once`) are
    remembered for their ttl, at most `max_claims` at once (more → `ClaimsFull`), and leave
    memory in claim order, O(1) amortized per claim: their ttls differ by at most one challenge
    lifetime, so a claim may outstay its ttl by that much, never leave early.
    """

    def __init__(
        self,
        max_skew_ms: int,
        rate_per_s: float,
        burst: int,
        *,
        marker_ttl_ms: int = 3_600_000,  # an hour: far beyond any default grid's horizon (65 s)
        max_claims: int = MAX_CLAIMS,
    ) -> None:
        self._nonces = ReplayGuard(2 * max_skew_ms)
        self._cells = ReplayGuard(marker_ttl_ms)
        self._limiter = KeyedLimiter(rate_per_s, burst)
        self._spendable: dict[str, int] = {}
        self._claims: OrderedDict[str, int] = OrderedDict()  # name → until (ms), claim order
        self._max_claims = max_claims

    async def admit_bet(
        self, address: str, nonce: str, cell_id: str, amount: int, now_ms: int
    ) -> Admit:
        """`HotState.admit_bet` in one process's memory: the same four steps in the same order,
        each undone on a later refusal (the rate token excepted), with no await in between, so
        two admissions never interleave."""
        if amount <= 0:
            raise ValueError(f"amount = {amount}: the edge admits positive stakes only")
        wait_ms = self._limiter.take(address, now_ms)
        if wait_ms:
            return Admit(False, "rate_limited", wait_ms)
        if not self._nonces.check_and_remember(address, nonce, now_ms):
            return Admit(False, "replayed_nonce")
        if not self._cells.check_and_remember(address, cell_id, now_ms):
            self._nonces.forget(address, nonce)
            return Admit(False, "duplicate_cell_bet")
        if self._spendable.get(address, 0) < amount:
            self._cells.forget(address, cell_id)
            self._nonces.forget(address, nonce)
            return Admit(False, "insufficient_funds")
        self._spendable[address] -= amount
        bucket = self._limiter.bucket(address, now_ms)
        return Admit(
            True, tokens_left=bucket.remaining(now_ms), full_in_ms=bucket.full_in_ms(now_ms)
        )

    async def admit_withdrawal(self, address: str, nonce: str, amount: int, now_ms: int) -> Admit:
        if amount <= 0:
            raise ValueError(f"amount = {amount}: the edge admits positive withdrawals only")
        if not self._nonces.check_and_remember(address, nonce, now_ms):
            return Admit(False, "replayed_nonce")
        if self._spendable.get(address, 0) < amount:
            self._nonces.forget(address, nonce)
            return Admit(False, "insufficient_funds")
        self._spendable[address] -= amount
        return ADMITTED

    async def release(
        self,
        address: str,
        amount: int,
        *,
        cell_id: str | None = None,
        nonce: str | None = None,
        held_by: str | None = None,
    ) -> None:
        """`HotState.release` in memory: give back what an admission reserved (and, if named,
        the cell marker and the nonce), at most once per holder."""
        # `held_by` is not needed here: an in-memory rebuild subtracts the holds still pending.
        self._spendable[address] = self._spendable.get(address, 0) + amount
        if cell_id is not None:
            self._cells.forget(address, cell_id)
        if nonce is not None:
            self._nonces.forget(address, nonce)

    async def credit(self, address: str, amount: int, *, entry_id: int | None = None) -> None:
        """Also takes a negative amount (a committed negative adjustment), so the hot balance
        follows the ledger down as well: staying above it would be stale in the unsafe direction.
        `entry_id` is ignored: this state is never seeded lazily from the ledger, so a credit
        normally meets a balance that lacks it."""
        self._spendable[address] = self._spendable.get(address, 0) + amount

    async def rebuild(self, balances: Mapping[str, int]) -> None:
        self._spendable = dict(balances)

    async def nonce_seen(self, address: str, nonce: str) -> bool:
        """Remembered within the last 2 × max_skew_ms (older nonces are the ledger's to know)."""
        return self._nonces.seen(address, nonce)

    async def remember_nonces(self, used: Iterable[tuple[str, str, int]], now_ms: int) -> None:
        for address, nonce, _accepted_at in used:
            self._nonces.check_and_remember(address, nonce, now_ms)

    async def claim_once(self, name: str, ttl_ms: int, now_ms: int) -> bool:
        """`HotState.claim_once` in memory: claims expire in the order they were made (one TTL
        each), so the expired are dropped from the front in O(1) amortized; when `max_claims`
        live claims are held a new one is refused (`ClaimsFull`) rather than any evicted."""
        claims = self._claims
        while claims:
            oldest = next(iter(claims))
            if claims[oldest] > now_ms:
                break
            del claims[oldest]
        until = claims.get(name)
        if until is not None:
            if until > now_ms:
                return False
            del claims[name]  # expired behind a longer-lived older claim
        if len(claims) >= self._max_claims:
            raise ClaimsFull(claims[next(iter(claims))] - now_ms)
        claims[name] = now_ms + ttl_ms
        return True

    def claims(self) -> int:
        """Claims remembered now (tests); not part of `HotState`."""
        return len(self._claims)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    def spendable(self, address: str) -> int:
        """The hot balance (tests, `/healthz` detail); not part of `HotState`."""
        return self._spendable.get(address, 0)
