"""Login challenges and sessions: who may sign bets, with which Ed25519 key, until when.

A challenge is a single-use SIWE nonce the server issued for one address; a session binds an
opaque bearer token to an address and the session public key the wallet authorised in its SIWE
message. This module decides issuance, single use, expiry and lookup; the caller makes the random
token and nonce, verifies signatures, and decides where the book lives (one process; restart means
log in again).

Memory is bounded, and a flood cannot buy other people's entries (issue 9, defect 8). Addresses
are free, so the bounds are on *clients* (the caller's key for who is asking: an IP address, an
IPv6 /64) as well as globally:
- a client holds at most `max_challenges_per_client` outstanding challenges (more →
  `CapacityExceeded(per_client=True)`, a 429) and `max_sessions_per_client` sessions (more → that
  client's own oldest session ends); an address holds at most `max_sessions_per_address`;
- when the global cap is reached, the entry given up is the oldest of the client holding the
  most — and only if it holds more than the newcomer would; otherwise the new one is refused
  (`CapacityExceeded(per_client=False)`, a 503) rather than anyone's pending login evicted. So a
  flood evicts its own entries first; to evict a legitimate pending challenge it would need as many
  distinct clients as the cap, each holding no more than the victim.
Every operation is O(1) amortized: challenges and sessions each have one TTL, so issue order is
expiry order and the expired are taken from the front.
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
    client: str = ""  # who asked for it (the caller's client key)


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    address: str  # lowercase 0x…
    session_key: str  # 64 hex, Ed25519 public key
    expires_at: int  # ms
    client: str = ""  # who logged in (the caller's client key)


class CapacityExceeded(Exception):
    """No room for a new challenge or session. `per_client`: this client holds its maximum (429);
    else the book is full of entries nobody may lose to this one (503). `retry_after_ms`: when
    room will be there at the latest without anyone's help (the oldest entry in the way expires)."""

    def __init__(self, what: str, *, per_client: bool, retry_after_ms: int) -> None:
        super().__init__(f"{what}: {'client' if per_client else 'server'} at capacity")
        self.per_client = per_client
        self.retry_after_ms = max(1, retry_after_ms)


class Holdings:
    """Which client holds which keys (oldest first), and who holds the most — each in O(1).

    Counts are bucketed (`count → clients with that count`), as in an O(1) LFU cache: moving a
    client up or down one is a dict move, and the largest bucket is tracked (a decrement leaves
    the client one bucket below, so the maximum drops by at most one and stays non-empty).
    """

    def __init__(self) -> None:
        self._held: dict[str, OrderedDict[str, None]] = {}
        self._by_count: dict[int, dict[str, None]] = {}
        self._max = 0

    def count(self, client: str) -> int:
        keys = self._held.get(client)
        return 0 if keys is None else len(keys)

    def oldest(self, client: str) -> str | None:
        keys = self._held.get(client)
        return None if not keys else next(iter(keys))

    def heaviest(self) -> tuple[str, int] | None:
        if self._max == 0:
            return None
        return next(iter(self._by_count[self._max])), self._max

    def _move(self, client: str, old: int, new: int) -> None:
        if old:
            bucket = self._by_count[old]
            del bucket[client]
            if not bucket:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, {})[client] = None
        if new > self._max:
            self._max = new
        elif old == self._max and old not in self._by_count:
            self._max = new  # the only client at the top came down by one (or to zero)

    def add(self, client: str, key: str) -> None:
        keys = self._held.setdefault(client, OrderedDict())
        keys[key] = None
        self._move(client, len(keys) - 1, len(keys))

    def remove(self, client: str, key: str) -> None:
        keys = self._held.get(client)
        if keys is None or key not in keys:
            return
        del keys[key]
        self._move(client, len(keys) + 1, len(keys))
        if not keys:
            del self._held[client]

    def __len__(self) -> int:
        return len(self._held)


class SessionBook:
    def __init__(
        self,
        *,
        challenge_ttl_ms: int,
        session_ttl_ms: int,
        max_challenges: int = 100_000,
        max_challenges_per_client: int = 2_000,
        max_sessions: int = 200_000,
        max_sessions_per_client: int = 10_000,
        max_sessions_per_address: int = 16,
    ):
        self.challenge_ttl_ms = challenge_ttl_ms
        self.session_ttl_ms = session_ttl_ms
        self.max_challenges = max_challenges
        self.max_challenges_per_client = max_challenges_per_client
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.max_sessions_per_address = max_sessions_per_address
        # Each address's live tokens, oldest first: logging in again and again cannot grow
        # memory — past the cap the oldest session of that address ends.
        self._by_address: dict[str, deque[str]] = {}
        # Insertion order = issue order = expiry order (one TTL each).
        self._challenges: OrderedDict[str, Challenge] = OrderedDict()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._challenge_holders = Holdings()
        self._session_holders = Holdings()

    # ── challenges ──

    def issue_challenge(
        self, address: str, nonce: str, now_ms: int, *, client: str = ""
    ) -> Challenge:
        """A new challenge for `client`, or `CapacityExceeded` (nothing changed then)."""
        self._expire_challenges(now_ms)
        held = self._challenge_holders.count(client)
        if held >= self.max_challenges_per_client:
            oldest = self._challenge_holders.oldest(client)
            wait = self._challenges[oldest].expires_at - now_ms if oldest else 1
            raise CapacityExceeded("challenges", per_client=True, retry_after_ms=wait)
        if len(self._challenges) >= self.max_challenges:
            victim = self._victim(self._challenge_holders, held)
            if victim is None:
                front = next(iter(self._challenges.values()))
                raise CapacityExceeded(
                    "challenges", per_client=False, retry_after_ms=front.expires_at - now_ms
                )
            self._drop_challenge(victim)
        ch = Challenge(nonce, address.lower(), now_ms, now_ms + self.challenge_ttl_ms, client)
        self._challenges[nonce] = ch
        self._challenge_holders.add(client, nonce)
        return ch

    def take_challenge(self, nonce: str, now_ms: int) -> Challenge | None:
        """The challenge for `nonce`, consumed: a second call (a replayed login) gets None."""
        ch = self._drop_challenge(nonce)
        if ch is None or ch.expires_at < now_ms:
            return None
        return ch

    def _drop_challenge(self, nonce: str) -> Challenge | None:
        ch = self._challenges.pop(nonce, None)
        if ch is not None:
            self._challenge_holders.remove(ch.client, nonce)
        return ch

    def _expire_challenges(self, now_ms: int) -> None:
        while self._challenges:
            front = next(iter(self._challenges.values()))
            if front.expires_at >= now_ms:
                return
            self._drop_challenge(front.nonce)

    # ── sessions ──

    def open_session(
        self, token: str, address: str, session_key: str, now_ms: int, *, client: str = ""
    ) -> Session:
        """A new session, or `CapacityExceeded` when the book is full of sessions nobody may
        lose to this one (nothing changed then)."""
        self._expire_sessions(now_ms)
        s = Session(
            token, address.lower(), session_key.lower(), now_ms + self.session_ttl_ms, client
        )
        tokens = self._by_address.get(s.address)
        # Room first from the newcomer's own address, then its own client, then the heaviest.
        if tokens is not None and len(tokens) >= self.max_sessions_per_address:
            self._forget(tokens[0])
        held = self._session_holders.count(client)
        if held >= self.max_sessions_per_client:
            oldest = self._session_holders.oldest(client)
            if oldest is not None:
                self._forget(oldest)
                held -= 1
        if len(self._sessions) >= self.max_sessions:
            victim = self._victim(self._session_holders, held)
            if victim is None:
                front = next(iter(self._sessions.values()))
                raise CapacityExceeded(
                    "sessions", per_client=False, retry_after_ms=front.expires_at - now_ms
                )
            self._forget(victim)
        self._sessions[token] = s
        self._by_address.setdefault(s.address, deque()).append(token)
        self._session_holders.add(client, token)
        return s

    def _forget(self, token: str) -> None:
        s = self._sessions.pop(token, None)
        if s is None:
            return
        self._session_holders.remove(s.client, token)
        tokens = self._by_address.get(s.address)
        if tokens is not None:
            try:
                tokens.remove(token)  # at most max_sessions_per_address long
            except ValueError:
                pass
            if not tokens:
                del self._by_address[s.address]

    def _expire_sessions(self, now_ms: int) -> None:
        while self._sessions:
            front = next(iter(self._sessions.values()))
            if front.expires_at > now_ms:
                return
            self._forget(front.token)

    def lookup(self, token: str, now_ms: int) -> Session | None:
        s = self._sessions.get(token)
        if s is None:
            return None
        if s.expires_at <= now_ms:
            self._forget(token)
            return None
        return s

    # ── both ──

    @staticmethod
    def _victim(holders: Holdings, newcomer_holds: int) -> str | None:
        """The key to give up for a newcomer that holds `newcomer_holds`: the oldest of the
        heaviest client, if it holds more than the newcomer will (else nobody's)."""
        top = holders.heaviest()
        if top is None or top[1] <= newcomer_holds + 1:
            return None
        return holders.oldest(top[0])

    def prune(self, now_ms: int) -> None:
        self._expire_challenges(now_ms)
        self._expire_sessions(now_ms)

    def counts(self) -> tuple[int, int]:
        """(outstanding challenges, live sessions), for gauges and tests."""
        return len(self._challenges), len(self._sessions)
