"""Login challenges and sessions: who may sign bets, with which Ed25519 key, until when.

A challenge is a single-use SIWE nonce the server issued for one address; a session binds an
opaque bearer token to an address and the session public key the wallet authorised in its SIWE
message. This module decides issuance, single use, expiry and lookup; the caller makes the random
token and nonce, verifies signatures, and decides where the book lives (one process; restart means
log in again). Memory is bounded: unclaimed challenges expire and the oldest are evicted first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass


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


class SessionBook:
    def __init__(
        self,
        *,
        challenge_ttl_ms: int,
        session_ttl_ms: int,
        max_challenges: int = 100_000,
        max_sessions_per_address: int = 16,
    ):
        self.challenge_ttl_ms = challenge_ttl_ms
        self.session_ttl_ms = session_ttl_ms
        self.max_challenges = max_challenges
        self.max_sessions_per_address = max_sessions_per_address
        # Each address's live tokens, oldest first: logging in again and again cannot grow
        # memory — past the cap the oldest session of that address ends.
        self._by_address: dict[str, deque[str]] = {}
        # Insertion order = issue order, so the oldest challenge is evicted first.
        self._challenges: OrderedDict[str, Challenge] = OrderedDict()
        self._sessions: dict[str, Session] = {}

    def issue_challenge(self, address: str, nonce: str, now_ms: int) -> Challenge:
        while len(self._challenges) >= self.max_challenges:
            self._challenges.popitem(last=False)
        ch = Challenge(nonce, address.lower(), now_ms, now_ms + self.challenge_ttl_ms)
        self._challenges[nonce] = ch
        return ch

    def take_challenge(self, nonce: str, now_ms: int) -> Challenge | None:
        """The challenge for `nonce`, consumed: a second call (a replayed login) gets None."""
        ch = self._challenges.pop(nonce, None)
        if ch is None or ch.expires_at < now_ms:
            return None
        return ch

    def open_session(self, token: str, address: str, session_key: str, now_ms: int) -> Session:
        s = Session(token, address.lower(), session_key.lower(), now_ms + self.session_ttl_ms)
        self._sessions[token] = s
        tokens = self._by_address.setdefault(s.address, deque())
        tokens.append(token)
        while len(tokens) > self.max_sessions_per_address:
            self._sessions.pop(tokens.popleft(), None)
        return s

    def _forget(self, token: str) -> None:
        s = self._sessions.pop(token, None)
        if s is None:
            return
        tokens = self._by_address.get(s.address)
        if tokens is not None:
            try:
                tokens.remove(token)
            except ValueError:
                pass
            if not tokens:
                del self._by_address[s.address]

    def lookup(self, token: str, now_ms: int) -> Session | None:
        s = self._sessions.get(token)
        if s is None:
            return None
        if s.expires_at <= now_ms:
            self._forget(token)
            return None
        return s

    def prune(self, now_ms: int) -> None:
        for nonce in [n for n, c in self._challenges.items() if c.expires_at < now_ms]:
            del self._challenges[nonce]
        for token in [t for t, s in self._sessions.items() if s.expires_at <= now_ms]:
            self._forget(token)
