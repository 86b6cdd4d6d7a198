"""Admission rules for signed requests: the exact bytes a session key signs, and whether a bet or a
withdrawal request is well-formed, on our chain, inside the timestamp window and truly signed.

This module decides the *stateless* refusals of API.md (`invalid_request`, `wrong_chain`,
`stale_timestamp`, `bad_signature`) and names every admission reason code in the order the edge
checks them. It leaves to its callers everything that needs state or market data: the bearer
token (`unauthorized`), the breaker and grid checks, and the hot state (`rate_limited`,
`replayed_nonce`, `duplicate_cell_bet`, `insufficient_funds`, see `tap/hotstate.py`).
`AdmissionRules` composes the stateless checks with a `ReplayGuard` into the whole signed-request
decision in one place, which is what the replay properties explore.

Time is an argument (`now_ms`); nothing here reads a clock.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519, crypto_sign_open
from nacl.exceptions import CryptoError

from tap.replay import ReplayGuard

# ── reason codes (API.md), in the order the edge checks a bet ─────────────────────────────────
# The signed-request checks below come first because they are cheap and need no state; the hot
# state's steps come last because they change state (a nonce is only remembered once the
# signature proved the request is the player's, so nobody can burn someone else's nonce).

INVALID_REQUEST: Final = "invalid_request"  # 400: body or nonce malformed
UNAUTHORIZED: Final = "unauthorized"  # 401: no or unknown bearer token (the edge's)
WRONG_CHAIN: Final = "wrong_chain"  # 401: signed for another chain id
STALE_TIMESTAMP: Final = "stale_timestamp"  # 401: |now - timestamp| > max_skew_ms
BAD_SIGNATURE: Final = "bad_signature"  # 401: not signed by this session's key
BREAKER_OPEN: Final = "breaker_open"  # 503
CELL_NOT_PLACEABLE: Final = "cell_not_placeable"  # 422
AMOUNT_OUT_OF_RANGE: Final = "amount_out_of_range"  # 422
MULTIPLIER_BELOW_MINIMUM: Final = "multiplier_below_minimum"  # 422: quote < min_multiplier_bps
EXPOSURE_LIMIT: Final = "exposure_limit"  # 422
RATE_LIMITED: Final = "rate_limited"  # 429, hot state step 1
REPLAYED_NONCE: Final = "replayed_nonce"  # 409, hot state step 2
DUPLICATE_CELL_BET: Final = "duplicate_cell_bet"  # 409, hot state step 3
INSUFFICIENT_FUNDS: Final = "insufficient_funds"  # 422, hot state step 4
OVERLOADED: Final = "overloaded"  # 503: the writer's queue is full
DEPENDENCY_UNAVAILABLE: Final = "dependency_unavailable"  # 503: the hot state did not answer

SIGNED_REQUEST_CHECKS: Final = (INVALID_REQUEST, WRONG_CHAIN, STALE_TIMESTAMP, BAD_SIGNATURE)
HOT_STATE_CHECKS: Final = (RATE_LIMITED, REPLAYED_NONCE, DUPLICATE_CELL_BET, INSUFFICIENT_FUNDS)
BET_REFUSAL_ORDER: Final = (
    INVALID_REQUEST,
    UNAUTHORIZED,
    WRONG_CHAIN,
    STALE_TIMESTAMP,
    BAD_SIGNATURE,
    BREAKER_OPEN,
    CELL_NOT_PLACEABLE,
    AMOUNT_OUT_OF_RANGE,
    MULTIPLIER_BELOW_MINIMUM,
    EXPOSURE_LIMIT,
    RATE_LIMITED,
    REPLAYED_NONCE,
    DUPLICATE_CELL_BET,
    INSUFFICIENT_FUNDS,
    OVERLOADED,
    DEPENDENCY_UNAVAILABLE,
)
HTTP_STATUS: Final[dict[str, int]] = {
    INVALID_REQUEST: 400,
    UNAUTHORIZED: 401,
    WRONG_CHAIN: 401,
    STALE_TIMESTAMP: 401,
    BAD_SIGNATURE: 401,
    BREAKER_OPEN: 503,
    CELL_NOT_PLACEABLE: 422,
    AMOUNT_OUT_OF_RANGE: 422,
    MULTIPLIER_BELOW_MINIMUM: 422,
    EXPOSURE_LIMIT: 422,
    RATE_LIMITED: 429,
    REPLAYED_NONCE: 409,
    DUPLICATE_CELL_BET: 409,
    INSUFFICIENT_FUNDS: 422,
    OVERLOADED: 503,
    DEPENDENCY_UNAVAILABLE: 503,
}

# ── the signed payloads (API.md, "Bets" and "Money") ───────────────────────────────────────────


def bet_payload(
    chain_id: int,
    address: str,
    cell_id: str,
    amount: int,
    nonce: str,
    timestamp: int,
    min_multiplier_bps: int,
) -> bytes:
    """The UTF-8 bytes a session key signs for a bet.

    Only `cell_id` is free text; every field after it is an integer or a nonce, none of which can
    hold `|`, so reading the fields from the right recovers them uniquely: two different requests
    never share a payload, and a signature binds every field.
    """
    return (
        f"tap-bet|v1|{chain_id}|{address.lower()}|{cell_id}|{amount}|{nonce}|{timestamp}"
        f"|{min_multiplier_bps}"
    ).encode()


def withdrawal_payload(
    chain_id: int, address: str, amount: int, nonce: str, timestamp: int
) -> bytes:
    """The UTF-8 bytes a session key signs for a withdrawal. The `tap-withdraw` prefix keeps a bet
    signature from ever verifying as a withdrawal, and the other way round."""
    return f"tap-withdraw|v1|{chain_id}|{address.lower()}|{amount}|{nonce}|{timestamp}".encode()


# ── field formats ──────────────────────────────────────────────────────────────────────────────

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def valid_nonce(nonce: str) -> bool:
    """16–64 characters of `[A-Za-z0-9_-]`: long enough to be unguessable, short enough to index,
    and never a `|` that could blur the signed payload."""
    return _NONCE.fullmatch(nonce) is not None


def valid_address(address: str) -> bool:
    """`0x` and 40 hex digits, in any case (EIP-55 checksums are checked where a wallet wrote the
    address, in SIWE; everywhere else addresses are compared lowercase)."""
    return _ADDRESS.fullmatch(address) is not None


def normalize_address(address: str) -> str | None:
    """The lowercase form every table, key and payload uses, or None when it is no address."""
    return address.lower() if valid_address(address) else None


def timestamp_ok(now_ms: int, ts: int, max_skew_ms: int) -> bool:
    """Inside the window `|now - ts| <= max_skew_ms` (inclusive at both edges).

    The window is symmetric because clients' clocks run both fast and slow; it is what lets the
    replay guard forget a nonce after 2 × max_skew_ms (see `tap/replay.py`).
    """
    return abs(now_ms - ts) <= max_skew_ms


# ── Ed25519 session keys ───────────────────────────────────────────────────────────────────────


class SessionKey:
    """The Ed25519 public key a player registered at login, ready to verify request signatures.

    Build it once per session (`from_hex`) and keep it: the key is decoded and checked once, and
    `verify` is then one libsodium call (about 55 µs on the reference machine), the hot path of
    every bet.
    """

    __slots__ = ("_key", "hex")

    def __init__(self, public_key_hex: str) -> None:
        """Decode 64 hex digits into a key; `ValueError` when the text is no usable Ed25519 key.

        Beyond the length, the point must decode and lie in the prime-order subgroup (libsodium's
        check in `crypto_sign_ed25519_pk_to_curve25519`). Small-order keys are the ones for which
        forged signatures exist; libsodium refuses them when verifying too, so a session holding
        one could never bet. Refusing it here makes the mistake visible at login, where it is made.
        """
        if _HEX64.fullmatch(public_key_hex) is None:
            raise ValueError("session key: expected 64 hex digits")
        key = bytes.fromhex(public_key_hex)
        try:
            crypto_sign_ed25519_pk_to_curve25519(key)
        except CryptoError:
            raise ValueError("session key: not a valid Ed25519 public key") from None
        self._key = key
        self.hex = public_key_hex.lower()  # as sessions store and show it

    @classmethod
    def from_hex(cls, public_key_hex: str) -> SessionKey | None:
        """As the constructor, but None instead of `ValueError` (for untrusted text)."""
        try:
            return cls(public_key_hex)
        except ValueError:
            return None

    def verify(self, payload: bytes, signature_hex: str) -> bool:
        """True iff `signature_hex` (128 hex digits) is this key's signature of `payload`.

        Never raises: malformed hex, a wrong length and a forged signature are all just False.
        libsodium refuses non-canonical signatures, so a valid signature has no second encoding.
        """
        if len(signature_hex) != 128:
            return False
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            return False
        if len(signature) != 64:  # fromhex skips whitespace: "ab cd…" decodes short
            return False
        try:
            crypto_sign_open(signature + payload, self._key)
        except CryptoError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionKey) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"SessionKey({self.hex!r})"


# ── the stateless decision on one signed request ───────────────────────────────────────────────


class SignedBet(Protocol):
    """The signed fields of a bet, as `BetRequest` and `WsPlaceBet` both carry them."""

    @property
    def cell_id(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def nonce(self) -> str: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def chain_id(self) -> int: ...
    @property
    def min_multiplier_bps(self) -> int: ...
    @property
    def signature(self) -> str: ...


class SignedWithdrawal(Protocol):
    """The signed fields of a withdrawal (`WithdrawalRequest`)."""

    @property
    def amount(self) -> int: ...
    @property
    def nonce(self) -> str: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def chain_id(self) -> int: ...
    @property
    def signature(self) -> str: ...


def verify_bet(
    now_ms: int,
    *,
    chain_id: int,
    max_skew_ms: int,
    session_key: SessionKey,
    address: str,
    bet: SignedBet,
) -> str | None:
    """The first of `SIGNED_REQUEST_CHECKS` this bet fails, or None when it may go on.

    `address` is the session's (already lowercase and trusted: it came from the bearer token),
    never a field of the request: the signature covers it, so a request signed for one account
    cannot be replayed on another. The signature is checked last because it costs the most.
    """
    if not valid_nonce(bet.nonce):
        return INVALID_REQUEST
    if bet.chain_id != chain_id:
        return WRONG_CHAIN
    if not timestamp_ok(now_ms, bet.timestamp, max_skew_ms):
        return STALE_TIMESTAMP
    payload = bet_payload(
        bet.chain_id,
        address,
        bet.cell_id,
        bet.amount,
        bet.nonce,
        bet.timestamp,
        bet.min_multiplier_bps,
    )
    if not session_key.verify(payload, bet.signature):
        return BAD_SIGNATURE
    return None


def verify_withdrawal(
    now_ms: int,
    *,
    chain_id: int,
    max_skew_ms: int,
    session_key: SessionKey,
    address: str,
    withdrawal: SignedWithdrawal,
) -> str | None:
    """As `verify_bet`, for the `tap-withdraw` payload."""
    if not valid_nonce(withdrawal.nonce):
        return INVALID_REQUEST
    if withdrawal.chain_id != chain_id:
        return WRONG_CHAIN
    if not timestamp_ok(now_ms, withdrawal.timestamp, max_skew_ms):
        return STALE_TIMESTAMP
    payload = withdrawal_payload(
        withdrawal.chain_id, address, withdrawal.amount, withdrawal.nonce, withdrawal.timestamp
    )
    if not session_key.verify(payload, withdrawal.signature):
        return BAD_SIGNATURE
    return None


class AdmissionRules:
    """The whole signed-request decision: the stateless checks, then the replay guard.

    One object per process (or per test). A request that passes `verify_bet` has its nonce
    remembered for 2 × max_skew_ms; a second request with the same (address, nonce) inside that
    time is `replayed_nonce`, and after it the timestamp window refuses it anyway, so "unique per
    address forever" holds without remembering forever. The nonce namespace is shared by bets and
    withdrawals of one address.

    The edge composes the same pieces with a `HotState` (whose guard also takes the rate token and
    reserves money atomically); this class is the reference the replay properties check.
    """

    def __init__(self, *, chain_id: int, max_skew_ms: int) -> None:
        self.chain_id = chain_id
        self.max_skew_ms = max_skew_ms
        self.replay = ReplayGuard(2 * max_skew_ms)

    def check_bet(
        self, now_ms: int, session_key: SessionKey, address: str, bet: SignedBet
    ) -> str | None:
        """None when the bet is admitted (and its nonce now remembered), else the reason code."""
        refusal = verify_bet(
            now_ms,
            chain_id=self.chain_id,
            max_skew_ms=self.max_skew_ms,
            session_key=session_key,
            address=address,
            bet=bet,
        )
        if refusal is not None:
            return refusal
        if not self.replay.check_and_remember(address, bet.nonce, now_ms):
            return REPLAYED_NONCE
        return None

    def check_withdrawal(
        self, now_ms: int, session_key: SessionKey, address: str, withdrawal: SignedWithdrawal
    ) -> str | None:
        """A withdrawal's signed-request checks, then its nonce (remembered only if everything
        else passed): the refusal code, or None."""
        refusal = verify_withdrawal(
            now_ms,
            chain_id=self.chain_id,
            max_skew_ms=self.max_skew_ms,
            session_key=session_key,
            address=address,
            withdrawal=withdrawal,
        )
        if refusal is not None:
            return refusal
        if not self.replay.check_and_remember(address, withdrawal.nonce, now_ms):
            return REPLAYED_NONCE
        return None

    def release(self, address: str, nonce: str) -> None:
        """The admitted request never happened (refused later, or lost before the writer): its
        nonce may be used again, so a client's retry after a 503 is not called a replay."""
        self.replay.forget(address, nonce)
