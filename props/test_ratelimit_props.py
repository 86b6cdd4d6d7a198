"""Token buckets against their definition: never more than `burst + rate · t` tokens in any
interval of `t` ms, every decision equal to an exact rational model, every wait honest, and a
`KeyedLimiter` that forgets idle buckets answering exactly as one that keeps them all."""

from __future__ import annotations

import copy
from fractions import Fraction

import hypothesis.strategies as st
from hypothesis import given

from tap.ratelimit import KeyedLimiter, TokenBucket

rates = st.one_of(
    st.sampled_from([0.1, 0.3, 1.0, 3.0, 7.0, 10.0, 33.3, 1000.0]),
    st.integers(1, 500).map(lambda k: k / 10),
)
bursts = st.integers(1, 30)
# (ms since the previous request, tokens asked for as a fraction of burst)
requests = st.lists(
    st.tuples(
        st.one_of(st.sampled_from([0, 1, 333, 1000]), st.integers(0, 5_000)),
        st.integers(1, 3),
    ),
    max_size=80,
)


@given(rate=rates, burst=bursts, reqs=requests)
def test_a_bucket_is_the_exact_continuous_token_bucket(
    rate: float, burst: int, reqs: list[tuple[int, int]]
) -> None:
    exact_rate = Fraction(str(rate))  # the rate as written in the config
    bucket = TokenBucket(rate, burst)
    level = Fraction(burst)  # model: tokens, refilled continuously, capped at burst
    now = 0
    grants: list[tuple[int, int]] = []  # (time, tokens)
    for dt, want in reqs:
        n = min(want, burst)
        now += dt
        level = min(Fraction(burst), level + exact_rate * dt / 1000)
        probe = copy.deepcopy(bucket)
        wait = bucket.take(now, n)
        if level >= n:
            assert wait == 0
            level -= n
            grants.append((now, n))
        else:
            # the first whole ms at which the model has n tokens
            expected = -(-((n - level) * 1000) // exact_rate)
            assert wait == expected >= 1
            assert probe.take(now + wait - 1, n) > 0
            assert probe.take(now + wait, n) == 0
        assert bucket.remaining(now) == int(level)

    # never more than burst + rate·t tokens in any interval [a, b] of t = b - a ms
    for i, (a, _) in enumerate(grants):
        taken = 0
        for b, n in grants[i:]:
            taken += n
            assert taken <= burst + exact_rate * (b - a) / 1000


@given(
    rate=rates,
    burst=bursts,
    reqs=st.lists(
        st.tuples(st.integers(0, 3_000), st.sampled_from("abcdefgh"), st.integers(1, 2)),
        max_size=120,
    ),
)
def test_forgetting_idle_buckets_changes_no_answer(
    rate: float, burst: int, reqs: list[tuple[int, str, int]]
) -> None:
    limiter = KeyedLimiter(rate, burst)
    kept: dict[str, TokenBucket] = {}
    now = 0
    for dt, key, want in reqs:
        now += dt
        n = min(want, burst)
        reference = kept.setdefault(key, TokenBucket(rate, burst, now_ms=now))
        assert limiter.take(key, now, n) == reference.take(now, n)
        assert limiter.remaining(key, now) == reference.remaining(now)
        assert len(limiter) <= len(kept)
