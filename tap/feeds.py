"""Price feeds without the networking: the simulated price path, the wire-format parsers, backoff.

This module decides what a feed message *means* — which tick it carries, in integer price
increments and integer milliseconds, or that it carries none (an ack, a heartbeat, another
instrument), or that it is garbage (`FeedParseError`) — and how long to wait before the next
reconnect. It leaves to its caller (`actors/ingest.py`) every socket, every clock read, every
retry loop and the decision of what to do with a tick. Like h11, it is fed values and returns
values; nothing here touches I/O or time.

Prices: exchanges send decimal strings ("97000.12"). They are parsed with `decimal.Decimal`,
multiplied by the market's `price_scale` and rounded to an integer increment **half-even**
(banker's rounding: a sub-increment remainder of exactly one half goes to the even neighbour, so
rounding is unbiased over many ticks and never depends on a float's binary representation). With
the default scale of 100 and a USD quote, exchanges already quote in cents and no rounding
happens at all; it only matters for finer-grained feeds.

Timestamps: milliseconds since the epoch, floored (a tick at .123999 s is at 123 ms), so a tick
is never placed later than it happened.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, DecimalException, localcontext
from typing import Any, Literal, TypeVar

import msgspec

from tap.messages import (
    BinanceSubscribe,
    BinanceTrade,
    CoinbaseSubscribe,
    CoinbaseTicker,
    Tick,
    WsPrice,
)

MS_PER_YEAR = 365 * 24 * 3600 * 1000  # the year API.md's pricing uses: 365 days
MAX_PRICE_INCREMENTS = 10**15  # far above any real quote; a larger "price" is garbage
MAX_PRICE_TEXT = 40  # characters; longer decimal strings are garbage, not prices

WireFormat = Literal["sim", "binance", "coinbase"]
_T = TypeVar("_T")


class FeedParseError(ValueError):
    """A feed message that is not valid JSON, not the expected shape, or an exchange error.

    The ingest actor counts it and skips the message; one bad frame never stops the feed.
    """


# ── the simulated price path ──────────────────────────────────────────────────────────────────


class GbmSim:
    """A seeded geometric Brownian motion with no drift in log-price: the model pricing assumes.

    `log S(t2) = log S(t1) + σ·√((t2 − t1) / year)·Z`, Z standard normal, σ annualized over a
    365-day year. The same seed and the same sequence of timestamps give the same prices, on any
    machine, which is what lets a test or a demo replay a session. The state is the float
    log-price; the returned price is rounded to an integer increment (at least 1), so rounding
    never accumulates into the path.

    `tick_ms` is the cadence the driver is expected to call `next` at; the path itself scales
    with whatever elapsed time `next` sees. The drivers (`actors/ingest.py`, `actors/feed_sim.py`)
    call it at every scheduled time, even late, so the path and the tick log have no holes.
    """

    def __init__(self, seed: int, sigma: float, tick_ms: int, start_price: int) -> None:
        if start_price <= 0:
            raise ValueError(f"start_price must be positive, got {start_price}")
        if sigma < 0 or not math.isfinite(sigma):
            raise ValueError(f"sigma must be a finite non-negative number, got {sigma}")
        if tick_ms <= 0:
            raise ValueError(f"tick_ms must be positive, got {tick_ms}")
        self.seed = seed
        self.sigma = sigma
        self.tick_ms = tick_ms
        self.start_price = start_price
        self._rng = random.Random(seed)
        self._log_price = math.log(start_price)
        self._last_ts: int | None = None
        self._price = start_price

    @property
    def price(self) -> int:
        """The most recent price (the start price before the first `next`)."""
        return self._price

    def next(self, ts_ms: int) -> int:
        """The price at `ts_ms`. The first call anchors the path and returns `start_price`;
        a timestamp not after the previous one returns the previous price and draws nothing."""
        if self._last_ts is None:
            self._last_ts = ts_ms
            return self._price
        dt_ms = ts_ms - self._last_ts
        if dt_ms <= 0:
            return self._price
        self._last_ts = ts_ms
        step = self.sigma * math.sqrt(dt_ms / MS_PER_YEAR) * self._rng.gauss(0.0, 1.0)
        self._log_price += step
        self._price = max(1, round(math.exp(self._log_price)))
        return self._price


# ── prices and times as integers ──────────────────────────────────────────────────────────────

# Enough digits that `price * scale` of any accepted string is exact before the final rounding.
_DECIMAL = Context(prec=80, rounding=ROUND_HALF_EVEN)


def price_to_increments(text: str, price_scale: int) -> int:
    """A decimal price string in quote currency → integer increments, rounded half-even.

    Raises `FeedParseError` for anything that is not a finite positive price of sane size.
    """
    if not isinstance(text, str) or not text or len(text) > MAX_PRICE_TEXT:
        raise FeedParseError(f"price {text!r} is not a decimal string")
    with localcontext(_DECIMAL):
        try:
            value = Decimal(text.strip())
        except DecimalException as e:
            raise FeedParseError(f"price {text!r} is not a decimal number") from e
        if not value.is_finite() or value <= 0:
            raise FeedParseError(f"price {text!r} is not a finite positive number")
        if value.adjusted() > 30:
            raise FeedParseError(f"price {text!r} is out of range")
        scaled = (value * price_scale).to_integral_value(rounding=ROUND_HALF_EVEN)
    increments = int(scaled)
    if not 0 < increments <= MAX_PRICE_INCREMENTS:
        raise FeedParseError(f"price {text!r} is {increments} increments: out of range")
    return increments


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def iso_to_ms(text: str) -> int:
    """An ISO 8601 timestamp with a UTC offset → ms since the epoch, floored.

    Sub-microsecond digits ("…50.714964855Z") are accepted and dropped. A timestamp without an
    offset is refused: guessing the zone would move ticks by hours.
    """
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError) as e:
        raise FeedParseError(f"time {text!r} is not ISO 8601") from e
    if when.tzinfo is None:
        raise FeedParseError(f"time {text!r} has no UTC offset")
    return (when - _EPOCH) // _ONE_MS


# ── wire formats ──────────────────────────────────────────────────────────────────────────────


def _decode_object(raw: str | bytes) -> dict[str, Any]:
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise FeedParseError(f"not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise FeedParseError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _convert(obj: dict[str, Any], kind: type[_T]) -> _T:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as e:
        raise FeedParseError(f"malformed {kind.__name__}: {e}") from e


def parse_binance(
    raw: str | bytes, *, symbol: str, instrument: str, price_scale: int
) -> Tick | None:
    """A Binance-style trade-stream message → the tick it carries, or None.

    Accepts a bare `trade` event and the combined-stream wrapper `{"stream", "data"}`. Returns
    None for the subscription ack (`{"result": null, "id": …}`), for other event types and for
    other instruments than `instrument`. The tick is labelled with our market `symbol` and the
    exchange's trade time `T`. Exchange errors (`{"code", "msg"}`, `{"error": …}`) and garbage
    raise `FeedParseError`.
    """
    obj = _decode_object(raw)
    if "stream" in obj and "data" in obj:
        data = obj["data"]
        if not isinstance(data, dict):
            raise FeedParseError("combined-stream `data` is not an object")
        obj = data
    if "e" not in obj:
        if "result" in obj and "id" in obj:
            return None  # the ack of our SUBSCRIBE
        if "error" in obj or "code" in obj:
            raise FeedParseError(f"exchange error: {obj.get('error') or obj.get('msg')!r}")
        raise FeedParseError(f"not a trade-stream message: keys {sorted(obj)}")
    if obj["e"] != "trade":
        return None
    trade = _convert(obj, BinanceTrade)
    if trade.s.upper() != instrument.upper():
        return None
    return Tick(symbol=symbol, ts=trade.T, price=price_to_increments(trade.p, price_scale))


COINBASE_IGNORED = frozenset({"subscriptions", "heartbeat"})


def parse_coinbase(
    raw: str | bytes, *, symbol: str, instrument: str, price_scale: int
) -> Tick | None:
    """A Coinbase-style feed message → the tick a `ticker` carries, or None.

    `subscriptions` (the subscribe ack) and `heartbeat` messages return None: they prove the
    connection is alive but carry no price. So do other channels' messages and tickers of other
    products. `error` messages and garbage raise `FeedParseError`. The tick's time is the
    ticker's `time`, floored to ms.
    """
    obj = _decode_object(raw)
    kind = obj.get("type")
    if kind == "error":
        raise FeedParseError(f"exchange error: {obj.get('message')!r} {obj.get('reason')!r}")
    if not isinstance(kind, str):
        raise FeedParseError("message has no `type`")
    if kind != "ticker":
        return None
    ticker = _convert(obj, CoinbaseTicker)
    if ticker.product_id != instrument:
        return None
    return Tick(
        symbol=symbol,
        ts=iso_to_ms(ticker.time),
        price=price_to_increments(ticker.price, price_scale),
    )


_SIM_FRAME = msgspec.json.Decoder(WsPrice)


def parse_sim(raw: str | bytes, *, symbol: str, instrument: str, price_scale: int) -> Tick | None:
    """A frame of our own simulator (`tap feed-sim`): a `price` message already in increments.

    `price_scale` is unused (the simulator speaks increments) but kept so every parser has the
    same shape. Frames for another instrument return None.
    """
    try:
        frame = _SIM_FRAME.decode(raw)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise FeedParseError(f"not a simulator price frame: {e}") from e
    if frame.symbol != instrument:
        return None
    if frame.price <= 0:
        raise FeedParseError(f"non-positive price {frame.price}")
    return Tick(symbol=symbol, ts=frame.ts, price=frame.price)


Parser = Callable[[str | bytes], Tick | None]

_PARSERS = {"sim": parse_sim, "binance": parse_binance, "coinbase": parse_coinbase}


def make_parser(fmt: WireFormat, *, symbol: str, instrument: str, price_scale: int) -> Parser:
    """The parser for one feed, with its market symbol, instrument and scale bound in."""
    parse = _PARSERS[fmt]

    def parser(raw: str | bytes) -> Tick | None:
        return parse(raw, symbol=symbol, instrument=instrument, price_scale=price_scale)

    return parser


def default_instrument(fmt: WireFormat, symbol: str) -> str:
    """The feed's name for our market when the config does not say: Binance writes BTC-USD as
    BTCUSDT (the dollar market there is the USDT pair); Coinbase and our simulator use ours."""
    if fmt == "binance":
        base, _, quote = symbol.partition("-")
        return (base + ("USDT" if quote == "USD" else quote)).upper()
    return symbol


def subscribe_message(fmt: WireFormat, instrument: str) -> bytes | None:
    """What to send right after connecting, or None when the URL alone selects the stream."""
    if fmt == "binance":
        return msgspec.json.encode(BinanceSubscribe(params=[f"{instrument.lower()}@trade"], id=1))
    if fmt == "coinbase":
        return msgspec.json.encode(
            CoinbaseSubscribe(product_ids=[instrument], channels=["ticker", "heartbeat"])
        )
    return None


# ── reconnecting ──────────────────────────────────────────────────────────────────────────────


def backoff_ms(attempt: int, initial: int, cap: int, rand: float) -> int:
    """How long to wait before reconnect attempt number `attempt` (0 = the first retry).

    Exponential with full jitter (AWS architecture blog, "Exponential Backoff and Jitter"):
    uniformly in `[0, min(cap, initial · 2^attempt))`, with `rand` a uniform draw in [0, 1)
    supplied by the caller. Full jitter spreads a herd of clients that lost the same server
    instead of having them return in lockstep; the price is that a wait may be very short, so
    the caller should only reset `attempt` after a connection proved healthy.
    """
    if attempt < 0 or initial < 0 or cap < 0:
        raise ValueError("attempt, initial and cap must be non-negative")
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")
    ceiling = min(cap, initial << min(attempt, 62))
    return int(rand * ceiling)
