"""The pure feed core: recorded exchange messages → ticks, the GBM path, reconnect backoff."""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap.feeds import (
    MS_PER_YEAR,
    FeedParseError,
    GbmSim,
    backoff_ms,
    default_instrument,
    iso_to_ms,
    make_parser,
    parse_binance,
    parse_coinbase,
    parse_sim,
    price_to_increments,
    subscribe_message,
)
from tap.messages import Tick

FEEDS = Path(__file__).resolve().parent / "data" / "feeds"
T0 = 1_732_287_600_000  # 2024-11-22T15:00:00Z


def lines(name: str) -> list[str]:
    return [line for line in (FEEDS / name).read_text().splitlines() if line]


def btc(ts: int, price: int) -> Tick:
    return Tick(symbol="BTC-USD", ts=ts, price=price)


# ── parsers on recorded samples ───────────────────────────────────────────────────────────────


def test_binance_samples_become_ticks_in_increments_and_exchange_ms() -> None:
    parse = make_parser("binance", symbol="BTC-USD", instrument="BTCUSDT", price_scale=100)
    assert [parse(m) for m in lines("binance.jsonl")] == [
        None,  # subscription ack
        btc(T0 + 121, 9_700_012),
        btc(T0 + 187, 9_700_012),  # 9700012.5 → even neighbour below
        btc(T0 + 190, 9_700_014),  # 9700013.5 → even neighbour above
        btc(T0 + 244, 9_700_013),  # just over one half rounds up
        btc(T0 + 300, 9_699_999),  # combined-stream wrapper
        None,  # another instrument
        None,  # another event type
    ]


def test_binance_error_replies_and_garbage_raise_parse_errors() -> None:
    for message in lines("binance_bad.jsonl"):
        with pytest.raises(FeedParseError):
            parse_binance(message, symbol="BTC-USD", instrument="BTCUSDT", price_scale=100)


def test_coinbase_samples_skip_acks_heartbeats_and_other_products() -> None:
    parse = make_parser("coinbase", symbol="BTC-USD", instrument="BTC-USD", price_scale=100)
    assert [parse(m) for m in lines("coinbase.jsonl")] == [
        None,  # subscriptions
        None,  # heartbeat
        btc(T0 + 123, 9_700_012),  # .123456 s floors to 123 ms
        btc(T0 + 999, 9_700_150),
        None,  # ETH-USD
        None,  # heartbeat
        btc(T0 + 1500, 9_700_000),  # 9699999.5 → even; nanosecond digits dropped
    ]


def test_coinbase_errors_and_garbage_raise_parse_errors() -> None:
    for message in lines("coinbase_bad.jsonl"):
        with pytest.raises(FeedParseError):
            parse_coinbase(message, symbol="BTC-USD", instrument="BTC-USD", price_scale=100)


def test_simulator_frames_are_already_increments() -> None:
    parse = make_parser("sim", symbol="BTC-USD", instrument="BTC-USD", price_scale=100)
    assert [parse(m) for m in lines("sim.jsonl")] == [
        btc(T0, 10_000_000),
        btc(T0 + 250, 10_000_531),
        None,
    ]
    for bad in (b'{"type":"price","symbol":"BTC-USD","ts":1,"price":0}', b'{"type":"grid"}', b"[]"):
        with pytest.raises(FeedParseError):
            parse_sim(bad, symbol="BTC-USD", instrument="BTC-USD", price_scale=100)


def test_parsers_accept_bytes_as_well_as_text() -> None:
    message = lines("coinbase.jsonl")[2]
    kw = {"symbol": "BTC-USD", "instrument": "BTC-USD", "price_scale": 100}
    assert parse_coinbase(message.encode(), **kw) == parse_coinbase(message, **kw)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_parse_or_raise_feed_parse_error(raw: bytes) -> None:
    kw = {"symbol": "BTC-USD", "instrument": "BTC-USD", "price_scale": 100}
    for parse in (parse_binance, parse_coinbase, parse_sim):
        try:
            tick = parse(raw, **kw)
        except FeedParseError:
            continue
        assert tick is None or tick.price > 0


# ── integers ──────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        ("97000.12", 100, 9_700_012),
        ("97000.125", 100, 9_700_012),
        ("97000.135", 100, 9_700_014),
        ("97000.1250000000001", 100, 9_700_013),
        ("1e5", 100, 10_000_000),
        ("0.015", 100, 2),
        ("0.025", 100, 2),
        ("1234.123456789", 10**8, 123_412_345_679),
    ],
)
def test_prices_round_half_even_without_floats(text: str, scale: int, expected: int) -> None:
    assert price_to_increments(text, scale) == expected


@pytest.mark.parametrize(
    "text", ["0", "-1", "0.004", "NaN", "Infinity", "", "abc", "1" * 50, "1e14", "1e99999999"]
)
def test_prices_that_are_not_positive_increments_are_refused(text: str) -> None:
    with pytest.raises(FeedParseError):
        price_to_increments(text, 100)


def test_iso_times_floor_to_ms_and_need_an_offset() -> None:
    assert iso_to_ms("2024-11-22T15:00:00.123999Z") == T0 + 123
    assert iso_to_ms("2024-11-22T16:00:00.5+01:00") == T0 + 500
    assert iso_to_ms("1969-12-31T23:59:59.9995Z") == -1  # floor, not toward zero
    with pytest.raises(FeedParseError):
        iso_to_ms("2024-11-22T15:00:00")


def test_instruments_and_subscribe_messages() -> None:
    assert default_instrument("binance", "BTC-USD") == "BTCUSDT"
    assert default_instrument("coinbase", "BTC-USD") == "BTC-USD"
    assert subscribe_message("binance", "BTCUSDT") == (
        b'{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}'
    )
    assert subscribe_message("coinbase", "BTC-USD") == (
        b'{"type":"subscribe","product_ids":["BTC-USD"],"channels":["ticker","heartbeat"]}'
    )
    assert subscribe_message("sim", "BTC-USD") is None


# ── the GBM path ──────────────────────────────────────────────────────────────────────────────


def path(seed: int, n: int, tick_ms: int = 250, sigma: float = 0.6) -> list[int]:
    sim = GbmSim(seed=seed, sigma=sigma, tick_ms=tick_ms, start_price=10_000_000)
    return [sim.next(T0 + i * tick_ms) for i in range(n)]


def test_gbm_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    assert path(7, 500) == path(7, 500)
    assert path(7, 500) != path(8, 500)
    assert path(7, 1)[0] == 10_000_000  # the first call anchors at the start price


def test_gbm_does_not_move_when_time_does_not() -> None:
    sim = GbmSim(seed=1, sigma=0.6, tick_ms=250, start_price=10_000_000)
    sim.next(T0)
    moved = sim.next(T0 + 250)
    assert sim.next(T0 + 250) == moved
    assert sim.next(T0 + 100) == moved


def log_return_variance(seed: int, n: int, tick_ms: int, sigma: float) -> float:
    prices = path(seed, n + 1, tick_ms, sigma)
    returns = [math.log(b / a) for a, b in itertools.pairwise(prices)]
    return statistics.pvariance(returns, mu=0.0)


@pytest.mark.parametrize("tick_ms", [250, 1000, 60_000])
def test_gbm_log_return_variance_is_sigma_squared_dt_over_a_365_day_year(tick_ms: int) -> None:
    sigma = 0.6
    expected = sigma**2 * tick_ms / MS_PER_YEAR
    measured = log_return_variance(seed=3, n=20_000, tick_ms=tick_ms, sigma=sigma)
    # 20 000 draws: the sample variance's relative standard error is √(2/20000) = 1 %.
    assert measured == pytest.approx(expected, rel=0.05)


def test_gbm_log_price_has_no_drift() -> None:
    prices = path(seed=11, n=20_001, tick_ms=1000)
    total = math.log(prices[-1] / prices[0])
    one_sd = 0.6 * math.sqrt(20_000 * 1000 / MS_PER_YEAR)
    assert abs(total) < 4 * one_sd


# ── backoff ───────────────────────────────────────────────────────────────────────────────────


@given(
    attempt=st.integers(0, 200),
    initial=st.integers(0, 10_000),
    cap=st.integers(0, 120_000),
    rand=st.floats(0.0, 1.0, exclude_max=True),
)
def test_backoff_is_within_zero_and_the_capped_exponential(
    attempt: int, initial: int, cap: int, rand: float
) -> None:
    wait = backoff_ms(attempt, initial, cap, rand)
    assert 0 <= wait <= min(cap, initial * 2**attempt)
    assert wait < max(1, min(cap, initial * 2**attempt))


def test_backoff_ceiling_doubles_then_caps() -> None:
    almost_one = math.nextafter(1.0, 0.0)
    ceilings = [backoff_ms(a, 250, 30_000, almost_one) + 1 for a in range(10)]
    assert ceilings == [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
    assert backoff_ms(3, 250, 30_000, 0.0) == 0
    assert backoff_ms(3, 250, 30_000, 0.5) == 1000


def test_backoff_refuses_a_draw_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError):
        backoff_ms(0, 250, 30_000, 1.0)
