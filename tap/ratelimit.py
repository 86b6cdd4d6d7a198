"""Token buckets: may this address act now, and if not, how long until it may?

A `TokenBucket` holds up to `burst` tokens and gains `rate_per_s` per second; each request takes
one (or `n`). `KeyedLimiter` keeps one bucket per key (address) and forgets buckets that have sat
idle long enough to be full again, so memory follows the number of *recently active* keys.
It decides grant or wait; it leaves to its caller what a key is and how to answer (`429
rate_limited`, `Retry-After`, the `RateLimit-*` headers). For per-client limits, `client_address`
says who the client is (X-Forwarded-For believed only from configured proxies) and `client_key`
what to count it under.

Exactness: the level is an integer count of *grains*, where one token is `1000 · den` grains and
one millisecond adds `num` grains, `num/den` being the rate as a fraction (limited to denominators
up to 10⁶, so `0.1` is exactly 1/10, not the float's binary expansion). Refill is then integer
arithmetic with no rounding at all: over any interval of `t` ms a bucket grants at most
`burst + rate · t / 1000` tokens, exactly, however long the process runs.

Time is an argument (`now_ms`); a `now_ms` older than the last one seen refills nothing (it never
moves the bucket backwards). Nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from fractions import Fraction

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_RATE_DENOMINATOR = 1_000_000  # rates are configured in decimals; 6 places is plenty
EVICT_PER_CALL = 4  # idle buckets dropped per call: O(1) work, still faster than keys arrive


def rate_fraction(rate_per_s: float) -> Fraction:
    """The configured rate as the exact fraction it was written as (`0.1` → 1/10)."""
    rate = Fraction(rate_per_s).limit_denominator(MAX_RATE_DENOMINATOR)
    if rate <= 0:
        raise ValueError(f"rate_per_s = {rate_per_s}: expected > 0 (to 6 decimal places)")
    return rate


class TokenBucket:
    """One bucket. It starts full: a new player may place `burst` bets at once."""

    __slots__ = ("_grain_per_ms", "_grains_per_token", "_last_ms", "_level", "burst", "capacity")

    def __init__(self, rate_per_s: float, burst: int, *, now_ms: int = 0) -> None:
        if burst < 1:
            raise ValueError(f"burst = {burst}: expected >= 1")
        rate = rate_fraction(rate_per_s)
        self.burst = burst
        self._grain_per_ms = rate.numerator
        self._grains_per_token = 1000 * rate.denominator
        self.capacity = burst * self._grains_per_token  # grains
        self._level = self.capacity
        self._last_ms = now_ms

    def _refill(self, now_ms: int) -> None:
        if now_ms > self._last_ms:
            gained = (now_ms - self._last_ms) * self._grain_per_ms
            self._level = min(self.capacity, self._level + gained)
            self._last_ms = now_ms

    def take(self, now_ms: int, n: int = 1) -> int:
        """Take `n` tokens: 0 when granted, else the ms until `n` tokens will be there (>= 1),
        which is honest: asking again exactly then, with no other take between, is granted.

        A refusal takes nothing. `n` above `burst` could never be granted and is a caller error.
        """
        if not 1 <= n <= self.burst:
            raise ValueError(f"n = {n}: expected 1..{self.burst}")
        self._refill(now_ms)
        need = n * self._grains_per_token
        if self._level >= need:
            self._level -= need
            return 0
        missing = need - self._level
        return -(-missing // self._grain_per_ms)  # ceil: the first ms at which it is there

    def remaining(self, now_ms: int) -> int:
        """Whole tokens available now (`RateLimit-Remaining`)."""
        self._refill(now_ms)
        return self._level // self._grains_per_token

    def full_in_ms(self, now_ms: int) -> int:
        """Ms until the bucket is full again (`RateLimit-Reset`, in seconds rounded up)."""
        self._refill(now_ms)
        return -(-(self.capacity - self._level) // self._grain_per_ms)

    @property
    def last_ms(self) -> int:
        """The latest time this bucket was consulted at."""
        return self._last_ms

    @property
    def refill_ms(self) -> int:
        """Ms an empty bucket takes to fill: idle this long, any bucket is full."""
        return -(-self.capacity // self._grain_per_ms)


class KeyedLimiter:
    """One token bucket per key, created full on first use, dropped when idle and full.

    Dropping is invisible to callers: a bucket idle for `refill_ms` is full, and a new bucket is
    created full, so the answers are exactly those of keeping every bucket forever. Buckets are
    kept in least-recently-used order (an `OrderedDict`: unlike a plain dict, taking from its
    front stays O(1) under churn), so the idle ones are at the front and a few are dropped on each
    call: memory stays proportional to the keys active in the
    last `refill_ms` (burst / rate seconds).
    """

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refill_ms = TokenBucket(rate_per_s, burst).refill_ms

    def bucket(self, key: str, now_ms: int) -> TokenBucket:
        """The key's bucket, moved to the back of the idle order (consulting counts as use)."""
        self._evict_idle(now_ms)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, now_ms=now_ms)
        else:
            self._buckets.move_to_end(key)
        return found

    def take(self, key: str, now_ms: int, n: int = 1) -> int:
        """As `TokenBucket.take`, for this key's bucket: 0 when granted, else ms to wait."""
        return self.bucket(key, now_ms).take(now_ms, n)

    def remaining(self, key: str, now_ms: int) -> int:
        """Whole tokens this key has now (a key never seen has `burst`)."""
        found = self._buckets.get(key)
        return self.burst if found is None else found.remaining(now_ms)

    def __len__(self) -> int:
        """Buckets held now (a gauge)."""
        return len(self._buckets)

    def _evict_idle(self, now_ms: int) -> None:
        for _ in range(EVICT_PER_CALL):
            oldest = next(iter(self._buckets.values()), None)
            if oldest is None or now_ms - oldest.last_ms < self.refill_ms:
                return
            self._buckets.popitem(last=False)


# ── whose bucket: the client behind a request ─────────────────────────────────────────────────

MAX_FORWARDED_HOPS = 32  # X-Forwarded-For entries looked at; a real proxy chain is a few long


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """`server.trusted_proxies` as networks (config validation has vetted each entry)."""
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> str:
    """The client's IP address: the socket `peer`, unless that is a trusted proxy — then the
    rightmost `X-Forwarded-For` hop that is not a trusted proxy (hops to its left are whatever
    the client chose to write). A malformed hop ends the walk at the last good one."""
    ip = _ip(peer or "")
    if ip is None:
        return peer or "?"  # not an IP socket (a unix socket): one shared client
    if not trusted or not forwarded_for or not _trusted(ip, trusted):
        return str(ip)
    hops = forwarded_for.split(",")[-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        found = _ip(hop)
        if found is None:
            break
        ip = found
        if not _trusted(ip, trusted):
            break
    return str(ip)


def client_key(address: str) -> str:
    """The key per-client limits count under: the address itself for IPv4, its /64 for IPv6
    (one subscriber gets a whole /64, so per-address keys would be free to multiply)."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address
