"""The hot state admission consults: nonces, rate tokens, one-bet-per-cell markers, spendable balances.

`HotState` is the seam between the edge and where this state lives: `InMemoryHotState` (one
process, the embedded default, defined here because it is pure) and `RedisHotState`
(`tap/store/redis_hot.py`, shared by many edge processes). Both answer the same questions with the
same reason codes, and both may be stale only in the safe direction: the hot balance never exceeds
what the ledger would allow, because the writer's conditional update is the final authority
(DESIGN rules 5–6).

Balance bookkeeping, in `delta`s of *spendable* units:
- `admit_bet` / `admit_withdrawal` reserve (−amount) before the writer sees the request;
- the writer refusing it → `release` (+amount, and the cell marker is cleared);
- a commit that adds money (deposit, win payout, void refund, credit) → `credit` (+amount);
- at startup → `rebuild` from the ledger's `available`.

Time is an argument (`now_ms`); nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

import msgspec

AdmitReason = Literal["replayed_nonce", "rate_limited", "duplicate_cell_bet", "insufficient_funds"]


class Admit(msgspec.Struct, frozen=True):
    """The answer to one admission: ok, or the API.md reason code (and when to retry)."""

    ok: bool
    reason: AdmitReason | None = None
    retry_after_ms: int = 0  # for rate_limited: time until the next token


ADMITTED = Admit(True)


class HotStateUnavailable(Exception):
    """The backing store did not answer in time; admission answers 503 dependency_unavailable."""


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
        self, address: str, amount: int, *, cell_id: str | None = None, nonce: str | None = None
    ) -> None:
        """Undo a reservation the writer refused or that never reached it. With `nonce`, the nonce
        is forgotten too (the request never happened: the client may retry it, e.g. after 503)."""
        ...

    async def credit(self, address: str, amount: int) -> None:
        """Money arrived after a commit (deposit, payout, refund, positive credit)."""
        ...

    async def rebuild(self, balances: Mapping[str, int]) -> None:
        """Replace every spendable balance with the ledger's `available` (startup, recovery)."""
        ...

    async def nonce_seen(self, address: str, nonce: str) -> bool: ...

    async def ping(self) -> bool:
        """True when the store answers (readiness)."""
        ...

    async def aclose(self) -> None: ...
