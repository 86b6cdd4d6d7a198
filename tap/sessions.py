"""Login challenges and sessions, signed instead of stored: who may sign bets, with which Ed25519
key, until when — checkable by every process of a deployment, before and after any restart.

A session token is the session itself, signed: (address, session key, issued_at, expires_at) and
an HMAC-SHA256 over them with the server secret. A challenge nonce is (issued_at, random part)
and a MAC over them and the address it was issued for. So any process holding the secret answers
"did we issue this, to whom, until when?" from the text alone, in O(1), with no shared memory and
no round trip on the bet path; a restart forgets nothing because there is nothing to forget.
What signing cannot give is single use: redeeming a challenge claims it once in a store every
process shares (`claim_once`: Redis `SET NX` when configured, else the process's memory).

This module decides the token and nonce formats, their checks, and the order of a login's checks
(`login`: the SIWE message through `siwe.check_login`, then the nonce, then the challenge's own
times, then the claim). It leaves to its caller the secret (≥ 32 bytes; `tap/runtime/
session_secret.py` finds it), the claim store, and what a refusal looks like on the wire.

Untrusted text is bounded before it is decoded: a token or nonce of any other length or alphabet
is refused without being parsed, and MACs are compared in constant time. Tokens are signed, not
encrypted: what they carry is what the login answer already told the client.

Pure: times are arguments (`now_ms`); nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from tap import siwe
from tap.errors import ApiError
from tap.hotstate import ClaimsFull, HotStateUnavailable

MIN_SECRET_BYTES: Final = 32
# HMAC-SHA256 truncated to 128 bits: no forgery within reach of any online guesser.
MAC_BYTES: Final = 16
# Edge clocks may disagree: a claim is kept this long past its challenge's expiry, so a process
# whose clock lags the claimer's by less than this still finds it while the message is in date.
CLAIM_MARGIN_MS: Final = 60_000

# ── token: base64url (unpadded) of version ‖ address ‖ session key ‖ issued_at ‖ expires_at ‖ MAC
TOKEN_VERSION: Final = 1
_TOKEN_FIELDS: Final = struct.Struct(">B20s32sQQ")  # the MAC covers all of it, version included
TOKEN_BYTES: Final = _TOKEN_FIELDS.size + MAC_BYTES
TOKEN_CHARS: Final = -(-TOKEN_BYTES * 4 // 3)  # 114
_TOKEN_TEXT: Final = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_CHARS}}}", re.ASCII)

# ── nonce: "1" ‖ issued_at (12 hex) ‖ random (16 hex) ‖ MAC (32 hex). EIP-4361 wants ≥ 8
# alphanumerics; lowercase hex is that, and fixed-width fields need no separators.
NONCE_VERSION: Final = "1"
_ISSUED_HEX: Final = 12  # ms since the epoch, good until the year 10889
_RANDOM_BYTES: Final = 8  # only to tell apart challenges issued in one millisecond to one address
_NONCE_TEXT: Final = re.compile(
    rf"{NONCE_VERSION}([0-9a-f]{{{_ISSUED_HEX}}})([0-9a-f]{{{2 * _RANDOM_BYTES}}})"
    rf"([0-9a-f]{{{2 * MAC_BYTES}}})",
    re.ASCII,
)
NONCE_CHARS: Final = 1 + _ISSUED_HEX + 2 * _RANDOM_BYTES + 2 * MAC_BYTES  # 61
_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)

# (name, ttl_ms, now_ms) → True the first time `name` is claimed within ttl_ms (`HotState`).
ClaimOnce = Callable[[str, int, int], Awaitable[bool]]

_LOGIN_TEXT: Final = {
    siwe.BAD_SIGNATURE: "signature does not recover to the message's address",
    siwe.WRONG_DOMAIN: "message domain or uri does not match this server",
    siwe.WRONG_CHAIN: "message chain id does not match this server",
    siwe.EXPIRED: "message is expired or not yet valid",
}


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: str
    address: str  # lowercase 0x…
    issued_at: int  # ms
    expires_at: int  # ms


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    address: str  # lowercase 0x…
    session_key: str  # 64 hex, Ed25519 public key
    expires_at: int  # ms
    issued_at: int = 0  # ms


def _address_bytes(address: str) -> bytes:
    if _ADDRESS.fullmatch(address) is None:
        raise ValueError(f"{address!r}: expected 0x and 40 hex digits")
    return bytes.fromhex(address[2:])


def _subkey(secret: bytes, purpose: bytes) -> bytes:
    """One key per use of the secret, so a MAC made for one purpose never passes for another."""
    return hmac.new(secret, b"tap|" + purpose, hashlib.sha256).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    # `hmac.digest`: the one-shot C path (no HMAC object per call; it runs on every request).
    return hmac.digest(key, data, "sha256")[:MAC_BYTES]


# How many verified session tokens a book remembers (≈ 400 bytes each).
VERIFIED_CACHE = 100_000


class SessionBook:
    """Issues and checks challenges and session tokens with one server secret.

    Every process built with the same secret and `[auth]` settings accepts what any of them
    issued. Nothing is stored here, so nothing here grows: a flood of challenges or logins costs
    the caller's rate limits and the claim store's bounded memory, never anyone else's login.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        domain: str,
        uri: str,
        chain_id: int,
        challenge_ttl_ms: int,
        session_ttl_ms: int,
        claims_from_ms: int = 0,
    ) -> None:
        """`claims_from_ms`: the claim store knows nothing claimed before this time. A store in
        process memory starts empty at each start, so pass the start time then: a challenge
        issued before it is refused (the client asks for a new one) instead of possibly
        redeemed twice. A shared, lasting store (Redis) passes 0."""
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"session secret: {len(secret)} bytes, expected >= {MIN_SECRET_BYTES}")
        self.domain = domain
        self.uri = uri
        self.chain_id = chain_id
        self.challenge_ttl_ms = challenge_ttl_ms
        self.session_ttl_ms = session_ttl_ms
        self.claims_from_ms = claims_from_ms
        self._token_key = _subkey(secret, b"session-token|v1")
        # Tokens this book has already verified (only those: a forged token never gets in),
        # so a player's every request costs a dict lookup instead of a base64 decode and an
        # HMAC. Bounded: past `VERIFIED_CACHE` entries it starts over.
        self._verified: dict[str, Session] = {}
        self._nonce_key = _subkey(secret, b"login-challenge|v1")

    # ── challenges ──

    def issue_challenge(self, address: str, now_ms: int) -> Challenge:
        """A new challenge for `address` (0x and 40 hex digits, any case)."""
        random_part = secrets.token_bytes(_RANDOM_BYTES)
        mac = self._nonce_mac(_address_bytes(address), now_ms, random_part)
        nonce = f"{NONCE_VERSION}{now_ms:0{_ISSUED_HEX}x}{random_part.hex()}{mac.hex()}"
        return Challenge(nonce, address.lower(), now_ms, now_ms + self.challenge_ttl_ms)

    def read_challenge(self, nonce: str, address: str) -> Challenge | None:
        """The challenge `nonce` names if this server issued it for `address`, else None. Says
        nothing about expiry or use (the message's times and the claim store do)."""
        match = _NONCE_TEXT.fullmatch(nonce) if len(nonce) == NONCE_CHARS else None
        if match is None or _ADDRESS.fullmatch(address) is None:
            return None
        issued_at = int(match[1], 16)
        expected = self._nonce_mac(_address_bytes(address), issued_at, bytes.fromhex(match[2]))
        if not hmac.compare_digest(bytes.fromhex(match[3]), expected):
            return None
        return Challenge(nonce, address.lower(), issued_at, issued_at + self.challenge_ttl_ms)

    def _nonce_mac(self, address: bytes, issued_at: int, random_part: bytes) -> bytes:
        if not 0 <= issued_at < 16**_ISSUED_HEX:
            raise ValueError(f"issued_at = {issued_at}: out of the nonce's range")
        return _mac(self._nonce_key, address + issued_at.to_bytes(8, "big") + random_part)

    # ── sessions ──

    def open_session(self, address: str, session_key_hex: str, now_ms: int) -> Session:
        """A new session token for `address` and the Ed25519 key (64 hex) it authorised."""
        expires_at = now_ms + self.session_ttl_ms
        fields = _TOKEN_FIELDS.pack(
            TOKEN_VERSION,
            _address_bytes(address),
            bytes.fromhex(session_key_hex),
            now_ms,
            expires_at,
        )
        raw = fields + _mac(self._token_key, fields)
        token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        return Session(token, address.lower(), session_key_hex.lower(), expires_at, now_ms)

    def lookup(self, token: str, now_ms: int) -> Session | None:
        """The session `token` carries, if this server signed it and it has not expired; None
        for anything else (a garbage token is just "unknown"). O(1): a token verified before is
        a dict lookup; any other a length and alphabet check, one base64 decode, one HMAC."""
        known = self._verified.get(token)
        if known is not None:
            return known if known.expires_at > now_ms else None
        if len(token) != TOKEN_CHARS or _TOKEN_TEXT.fullmatch(token) is None:
            return None
        raw = base64.urlsafe_b64decode(token + "=" * (-TOKEN_CHARS % 4))
        # Unpadded base64 has spare low bits in its last character: only the one spelling this
        # server writes is accepted, so a token has exactly one text.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None
        fields, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, _mac(self._token_key, fields)):
            return None
        version, address, key, issued_at, expires_at = _TOKEN_FIELDS.unpack(fields)
        if version != TOKEN_VERSION or expires_at <= now_ms:
            return None
        session = Session(token, "0x" + address.hex(), key.hex(), expires_at, issued_at)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = session
        return session

    # ── login ──

    async def login(
        self, message: str, signature: str, now_ms: int, *, claim_once: ClaimOnce
    ) -> Session:
        """Exchange a signed SIWE message for a session, or raise `ApiError` with API.md's code.

        Cheapest and non-consuming checks first, the claim last, so a refused login never spends
        its challenge: the message (`siwe.check_login`: format, domain, chain, dates, session key,
        signature), the nonce (issued by us for the signer → else `unknown_nonce`), the
        challenge's own times in the message (a client may not stretch its login's validity or
        date it ahead → `expired`), then one claim of the nonce in the shared store (already
        claimed → `unknown_nonce`; store down → 503 `dependency_unavailable`; full → 503
        `overloaded`).
        """
        checked = siwe.check_login(
            message,
            signature,
            domain=self.domain,
            uri=self.uri,
            chain_id=self.chain_id,
            now_ms=now_ms,
        )
        if checked.error is not None:
            raise ApiError(checked.error, checked.detail or _LOGIN_TEXT.get(checked.error, ""))
        msg, key = checked.message, checked.session_key
        assert msg is not None and key is not None  # check_login's contract when error is None
        challenge = self.read_challenge(msg.nonce, msg.address)
        if challenge is None or challenge.issued_at < self.claims_from_ms:
            raise ApiError("unknown_nonce", "nonce was not issued for this address, or was used")
        if msg.issued_at_ms != challenge.issued_at or msg.expiration_ms != challenge.expires_at:
            raise ApiError(
                "expired",
                "Issued At and Expiration Time must be the challenge's issued_at and "
                "expiration_time",
            )
        # `check_login` refused now >= expiration, so the claim lives at least the margin.
        ttl_ms = challenge.expires_at - now_ms + CLAIM_MARGIN_MS
        try:
            first = await claim_once(f"login:{msg.nonce}", ttl_ms, now_ms)
        except HotStateUnavailable:
            raise ApiError(
                "dependency_unavailable",
                "the login store is unavailable; sign in again shortly",
                retry_after_s=1,
            ) from None
        except ClaimsFull as e:
            raise ApiError(
                "overloaded",
                "too many logins in flight; sign in again shortly",
                retry_after_s=-(-e.retry_after_ms // 1000),
            ) from None
        if not first:
            raise ApiError("unknown_nonce", "nonce was not issued for this address, or was used")
        return self.open_session(msg.address, key.hex, now_ms)
