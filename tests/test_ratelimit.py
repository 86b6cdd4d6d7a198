"""Token buckets: grants, honest waits, exact refill over long runs, bounded keyed memory."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tap.ratelimit import (
    KeyedLimiter,
    TokenBucket,
    client_address,
    client_key,
    parse_networks,
    rate_fraction,
)


def test_a_new_bucket_grants_its_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(10.0, 3)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == 100  # one token per 100 ms
    assert bucket.remaining(0) == 0


def test_the_wait_is_honest_to_the_millisecond() -> None:
    bucket = TokenBucket(3.0, 1)  # a token every 333⅓ ms
    assert bucket.take(0) == 0
    wait = bucket.take(0)
    assert wait == 334
    assert bucket.take(wait - 1) == 1
    assert bucket.take(wait) == 0


def test_a_refusal_takes_nothing() -> None:
    bucket = TokenBucket(1.0, 2)
    assert bucket.take(0, 2) == 0
    assert bucket.take(500) == 500
    assert bucket.take(999) == 1
    assert bucket.take(1000) == 0


def test_taking_several_tokens_at_once() -> None:
    bucket = TokenBucket(2.0, 5)
    assert bucket.take(0, 4) == 0
    assert bucket.take(0, 2) == 500
    assert bucket.take(500, 2) == 0
    with pytest.raises(ValueError, match=r"1\.\.5"):
        bucket.take(500, 6)
    with pytest.raises(ValueError, match=r"1\.\.5"):
        bucket.take(500, 0)


def test_refill_is_exact_for_rates_without_a_whole_ms_period() -> None:
    """3/s: three steps of 333 ms give 2 tokens and 999/1000 of one; the next ms completes it."""
    bucket = TokenBucket(3.0, 10)
    assert bucket.take(0, 10) == 0
    for t in (333, 666, 999):
        bucket.remaining(t)
    assert bucket.remaining(999) == 2
    assert bucket.remaining(1000) == 3


def test_a_decimal_rate_is_taken_as_written_and_never_drifts() -> None:
    assert rate_fraction(0.1) == Fraction(1, 10)
    bucket = TokenBucket(0.1, 1)
    t = 0
    for _ in range(100_000):  # 10⁹ ms of one token every 10 s, to the millisecond
        assert bucket.take(t) == 0
        assert bucket.take(t + 9_999) == 1
        t += 10_000
    assert bucket.take(t) == 0


def test_tokens_over_a_very_long_idle_period_are_capped_at_burst() -> None:
    bucket = TokenBucket(10.0, 20)
    assert bucket.take(0, 20) == 0
    assert bucket.remaining(10**15) == 20
    assert bucket.full_in_ms(10**15) == 0


def test_full_in_ms_tells_when_the_bucket_is_full_again() -> None:
    bucket = TokenBucket(10.0, 20)
    assert bucket.take(0, 5) == 0
    assert bucket.full_in_ms(0) == 500
    assert bucket.full_in_ms(250) == 250
    assert bucket.refill_ms == 2000


def test_time_stepping_back_refills_nothing_and_breaks_nothing() -> None:
    bucket = TokenBucket(1.0, 1, now_ms=10_000)
    assert bucket.take(10_000) == 0
    assert bucket.take(5_000) == 1000  # the wait counts from the bucket's own latest time
    assert bucket.take(10_999) == 1
    assert bucket.take(11_000) == 0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1e-9, 1), (1.0, 0)])
def test_nonsense_rates_and_bursts_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_keyed_limiter_keeps_one_bucket_per_key() -> None:
    limiter = KeyedLimiter(1.0, 1)
    assert limiter.take("a", 0) == 0
    assert limiter.take("a", 0) == 1000
    assert limiter.take("b", 0) == 0
    assert limiter.remaining("a", 0) == 0
    assert limiter.remaining("never-seen", 0) == 1


def test_keyed_limiter_forgets_idle_full_buckets_so_memory_follows_activity() -> None:
    limiter = KeyedLimiter(10.0, 20)  # refill_ms = 2000
    for i in range(1000):
        assert limiter.take(f"k{i}", i * 10) == 0
        assert len(limiter) <= 2000 // 10 + 1
    assert limiter.take("late", 10**9) == 0
    assert len(limiter) < 1000


def test_a_forgotten_bucket_answers_as_if_it_had_been_kept() -> None:
    limiter = KeyedLimiter(1.0, 2)
    assert limiter.take("a", 0, 2) == 0
    for i in range(10):  # other keys drive eviction of "a" once it is full again
        limiter.take(f"k{i}", 2_000 + i)
    assert limiter.take("a", 2_100, 2) == 0
    assert limiter.take("a", 2_100) == 1000


# ── the client behind a request ───────────────────────────────────────────────────────────────

PROXIES = parse_networks(["10.0.0.0/8", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("192.0.2.1", "6.6.6.6", "192.0.2.1"),  # not a proxy: its header is its own invention
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "6.6.6.6, 192.0.2.7", "192.0.2.7"),  # rightmost untrusted hop
        ("10.0.0.1", "192.0.2.7, 10.2.3.4", "192.0.2.7"),  # through two proxies
        ("10.0.0.1", "10.9.9.9, 10.2.3.4", "10.9.9.9"),  # every hop trusted: the leftmost
        ("10.0.0.1", "garbage, 10.2.3.4", "10.2.3.4"),  # malformed: the last good hop
        ("10.0.0.1", " 192.0.2.7 ,", "10.0.0.1"),  # an empty rightmost hop is malformed
        ("::ffff:10.0.0.1", "::ffff:192.0.2.9", "192.0.2.9"),  # v4-mapped is v4
        ("2001:db8:ffff::1", "2001:db8:1::5", "2001:db8:1::5"),
        (None, "192.0.2.7", "?"),
        ("unix-socket", "192.0.2.7", "unix-socket"),
    ],
)
def test_client_address_believes_forwarded_for_only_from_trusted_proxies(
    peer: str | None, xff: str | None, client: str
) -> None:
    assert client_address(peer, xff, PROXIES) == client
    # With no proxy configured, the header never counts.
    assert client_address(peer, xff, ()) == client_address(peer, None, PROXIES)


def test_client_keys_group_ipv6_by_64_and_forwarded_hops_are_bounded() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert (
        client_key("2001:db8:1:2:aaaa::1")
        == client_key("2001:db8:1:2::ffff")
        == ("2001:db8:1:2::/64")
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    long_chain = ", ".join(["192.0.2.200"] + ["10.0.0.1"] * 10_000)
    assert client_address("10.0.0.1", long_chain, PROXIES) == "10.0.0.1"  # 32 hops looked at
