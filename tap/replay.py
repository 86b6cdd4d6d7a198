"""The replay guard: has this (address, nonce) been seen recently? It remembers each pair for at
least `memory_ms` after first sight, in memory proportional to the pairs seen in that time.

It decides only "first time or not". It leaves to its caller what a pair means, when to ask (only
after the request's signature verified, so nobody can burn another player's nonce) and the
durable memory: a nonce is also stored with its bet (`UNIQUE(address, nonce)`), which refuses a
replay after a restart.

Why `memory_ms = 2 × max_skew_ms` is enough, together with the timestamp window
(`|now - timestamp| <= max_skew_ms`, `tap.admission.timestamp_ok`): a request first admitted at
`t1` carries a timestamp `ts >= t1 - skew`; the same signed bytes pass the window again only while
`t2 <= ts + skew`, that is `t2 - t1 <= 2 × skew`. A replay later than that is refused as
`stale_timestamp` before the guard is asked, so forgetting the pair then changes no answer.
(The pair's signature fixes `ts`: a different timestamp is a different, unsigned request.)

Pruning is by time buckets: a pair lives in the bucket of its first-sight time, and whole buckets
are dropped once their youngest possible member is older than `memory_ms`. Each pair is stored
and dropped once, so the cost per call is amortised O(1), and a pair is kept between `memory_ms`
and `memory_ms + bucket_ms`.

Time is an argument (`now_ms`, expected never to go backwards; if it does, pairs are filed in the
newest bucket, which only keeps them longer). Nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque

BUCKETS_PER_MEMORY = 8  # keeps at most 1/8 of memory_ms extra; 9 buckets alive at a time


class ReplayGuard:
    def __init__(self, memory_ms: int) -> None:
        """Remember each pair at least `memory_ms` (pass 2 × max_skew_ms; see the module text)."""
        if memory_ms <= 0:
            raise ValueError(f"memory_ms = {memory_ms}: expected a positive integer")
        self.memory_ms = memory_ms
        self.bucket_ms = max(1, memory_ms // BUCKETS_PER_MEMORY)
        # (key, nonce) → the bucket it was filed in; a forgotten-then-reseen pair is filed again
        # in a newer bucket, and the older bucket's drop leaves it alone.
        self._bucket_of: dict[tuple[str, str], int] = {}
        self._buckets: deque[tuple[int, list[tuple[str, str]]]] = deque()

    def check_and_remember(self, key: str, nonce: str, now_ms: int) -> bool:
        """True the first time `(key, nonce)` is seen within `memory_ms` (and it is remembered
        from now on), False when it was seen before."""
        self._prune(now_ms)
        pair = (key, nonce)
        if pair in self._bucket_of:
            return False
        bucket = now_ms // self.bucket_ms
        if self._buckets and self._buckets[-1][0] >= bucket:
            bucket = self._buckets[-1][0]
            self._buckets[-1][1].append(pair)
        else:
            self._buckets.append((bucket, [pair]))
        self._bucket_of[pair] = bucket
        return True

    def seen(self, key: str, nonce: str) -> bool:
        """Whether `(key, nonce)` is remembered, without remembering it. It prunes nothing, so a
        pair may be reported a little past `memory_ms`: the safe direction."""
        return (key, nonce) in self._bucket_of

    def forget(self, key: str, nonce: str) -> None:
        """Drop a pair at once: the request it belonged to never happened (refused downstream)."""
        self._bucket_of.pop((key, nonce), None)

    def __len__(self) -> int:
        """Pairs remembered now (a gauge; bounded by the pairs seen in the last memory_ms)."""
        return len(self._bucket_of)

    def _prune(self, now_ms: int) -> None:
        # Bucket b holds first sights in [b·w, (b+1)·w); its youngest member was seen at
        # (b+1)·w − 1, which is more than memory_ms old once now >= (b+1)·w + memory_ms.
        buckets = self._buckets
        while buckets and (buckets[0][0] + 1) * self.bucket_ms + self.memory_ms <= now_ms:
            bucket, pairs = buckets.popleft()
            for pair in pairs:
                if self._bucket_of.get(pair) == bucket:
                    del self._bucket_of[pair]
