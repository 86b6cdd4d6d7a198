"""Every message that crosses a boundary in tap: actor to actor, HTTP body, WebSocket frame.

This module is the only place message types are defined (STYLE: tractor's closed set). They are
msgspec Structs grouped by direction; units are in the field comments. Actor messages are frozen
values passed over trio channels; wire messages decode strictly (unknown fields and wrong types are
errors that name the field) and WebSocket frames are tagged by `"type"`.

Pure data: no behaviour beyond small derived views.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

# Money: int units (1e-6 currency). Prices: int increments. Times: int ms since the epoch (UTC).

BetStatus = Literal[
    "pending",  # passed admission, queued for the writer (answered 202)
    "confirmed",  # committed: stake moved available → locked, fsync'd
    "rejected",  # the writer refused it (reason says why); no money moved
    "won",  # a tick touched the band inside the window; payout credited
    "lost",  # the window ended untouched; stake kept by the house
    "void",  # a feed gap overlapped the window; stake refunded
]
EntryKind = Literal["deposit", "stake", "payout", "refund", "withdrawal", "adjustment"]
BreakerMode = Literal["open", "closed", "auto"]
BreakerStateName = Literal["open", "closed"]


S = TypeVar("S", bound=msgspec.Struct)


def project(kind: type[S], *sources: object, **values: object) -> S:
    """A `kind` built from the same-named fields of `sources` (earlier sources win), with
    `values` taking precedence over both: the one way a bet's fields move from one shape to the
    next (a WS frame to a request, a quote and a request to the writer's `PlaceBet`, a `PlaceBet`
    to the player's `Bet` or the resolver's `OpenBet`), instead of a hand copy per pair that can
    drop or swap a field. A field no source has keeps its default (or is an error if it has
    none: `TypeError` from the constructor)."""
    fields: dict[str, object] = {}
    for name in kind.__struct_fields__:
        if name in values:
            fields[name] = values[name]
            continue
        for source in sources:
            if hasattr(source, name):
                fields[name] = getattr(source, name)
                break
    return kind(**fields)


class Frozen(msgspec.Struct, frozen=True, kw_only=True):
    pass


# ── ingest → breaker · resolver · hub · batcher ──────────────────────────────────────────────


class Tick(Frozen, frozen=True):
    symbol: str
    ts: int  # ms, exchange time when known, else receive time
    price: int  # increments


# ── exchange feeds ⇄ ingest (their wire formats, decoded by `tap.feeds`) ─────────────────────────
# Unknown fields are ignored: exchanges add fields without notice. Prices arrive as decimal
# strings and stay strings here, so no float ever touches them. Our own simulator (`tap
# feed-sim`) speaks `WsPrice` frames, the same `price` message the public WebSocket sends.


class BinanceTrade(msgspec.Struct, kw_only=True):
    """A Binance-style `<instrument>@trade` event (alone, or as `data` of a combined stream)."""

    e: Literal["trade"]
    s: str  # instrument, e.g. "BTCUSDT"
    p: str  # price, decimal string in quote currency
    T: int  # trade time, ms


class BinanceSubscribe(msgspec.Struct, kw_only=True):
    method: Literal["SUBSCRIBE"] = "SUBSCRIBE"
    params: list[str]  # stream names, e.g. ["btcusdt@trade"]
    id: int  # echoed in the ack {"result": null, "id": …}


class CoinbaseTicker(msgspec.Struct, kw_only=True):
    """A Coinbase-style `ticker` channel message."""

    type: Literal["ticker"]
    product_id: str  # instrument, e.g. "BTC-USD"
    price: str  # last trade price, decimal string in quote currency
    time: str  # ISO 8601 with a UTC offset ("2024-11-22T15:00:00.123456Z")


class CoinbaseSubscribe(msgspec.Struct, kw_only=True):
    type: Literal["subscribe"] = "subscribe"
    product_ids: list[str]
    channels: list[str]  # ["ticker", "heartbeat"]: heartbeats keep a quiet feed visibly alive


# ── breaker → edge · hub ──────────────────────────────────────────────────────────────────────


class BreakerChanged(Frozen, frozen=True, tag="breaker_changed"):
    state: BreakerStateName
    reason: str  # "stale_feed" | "jump" | "override" | "recovered" | "startup"
    at: int  # ms
    symbol: str = ""  # the market it concerns; "" = every market (one feed, one breaker)


# ── edge → batcher (the only writer) ──────────────────────────────────────────────────────────


class DecidedBy(Frozen, frozen=True):
    ts: int  # ms of the deciding tick
    price: int  # increments


class PlaceBet(Frozen, frozen=True, tag="place_bet"):
    """A bet that passed admission; the writer reserves its stake or rejects it."""

    bet_id: str
    address: str  # lowercase 0x…
    cell_id: str
    symbol: str
    col: int
    row: int
    t_start: int
    t_end: int
    price_lo: int
    price_hi: int
    amount: int  # units
    multiplier_bps: int  # locked quote
    nonce: str
    accepted_at: int  # ms
    # The request's signed fields, kept with the bet so anyone can re-verify it later.
    timestamp: int
    chain_id: int
    min_multiplier_bps: int
    signature: str

    def as_bet(self, status: BetStatus = "pending", reason: str | None = None) -> Bet:
        """The bet this request is before the ledger has confirmed it (the desk's 202, a
        refusal that stored nothing): the player-facing fields, no confirmation yet."""
        return project(Bet, self, status=status, reason=reason)


class Deposit(Frozen, frozen=True, tag="deposit"):
    address: str
    amount: int
    ref: str  # idempotency reference (unique)
    at: int


class Withdrawal(Frozen, frozen=True, tag="withdrawal"):
    address: str
    amount: int
    nonce: str
    ref: str
    at: int


class AdminCredit(Frozen, frozen=True, tag="admin_credit"):
    address: str
    amount: int  # signed: a negative adjustment may not take available below zero
    reason: str
    ref: str
    at: int


class Outcome(Frozen, frozen=True):
    """The resolver's decision for one bet."""

    bet_id: str
    address: str
    status: Literal["won", "lost", "void"]
    amount: int  # the stake
    payout: int  # units credited: amount*multiplier//10000 on a win, amount on void, 0 on loss
    decided_by: DecidedBy | None
    reason: str  # "touch" | "column_end" | "feed_gap"
    at: int


class Settle(Frozen, frozen=True):
    outcomes: tuple[Outcome, ...]


class StoreTicks(Frozen, frozen=True):
    ticks: tuple[Tick, ...]


WriterRequest = PlaceBet | Deposit | Withdrawal | AdminCredit | Settle | StoreTicks


# ── batcher → hub · resolver · waiters (only after commit) ────────────────────────────────────


class Bet(Frozen, frozen=True):
    """A bet as API.md shows it (GET /api/bets/{id}, WS bet_* messages)."""

    bet_id: str
    address: str
    cell_id: str
    amount: int
    multiplier_bps: int
    nonce: str
    status: BetStatus
    accepted_at: int
    confirmed_at: int | None = None
    resolved_at: int | None = None
    payout: int | None = None
    decided_by: DecidedBy | None = None
    reason: str | None = None


class LedgerEntry(Frozen, frozen=True):
    entry_id: int
    address: str
    kind: EntryKind
    amount: int  # signed change of `available`
    locked_delta: int  # signed change of `locked` (stake: +a; payout/refund: -a)
    balance_after: int  # `available` after this entry
    ref: str
    at: int


class Balance(Frozen, frozen=True):
    """An account's balance right after one committed event (API.md: carried inside the bet
    frames, so one frame per committed bet tells the player everything)."""

    available: int  # units
    locked: int  # units: stakes of open bets


class BetConfirmed(Frozen, frozen=True, tag="bet_confirmed"):
    bet: Bet
    balance: Balance | None = None  # after this bet; None only where the writer had no row


class BetRejected(Frozen, frozen=True, tag="bet_rejected"):
    bet: Bet
    reason: str  # insufficient_funds | duplicate_cell_bet | replayed_nonce | …
    balance: Balance | None = None  # unchanged by the rejection; None: the account has no row


class BetResolved(Frozen, frozen=True, tag="bet_resolved"):
    bet: Bet
    # The resolution's ledger row (payout, or refund): the hot state's credit carries it, so a
    # balance seeded from a ledger read that already held it is not paid twice.
    entry_id: int | None = None
    balance: Balance | None = None  # after the payout / refund


class BalanceChanged(Frozen, frozen=True, tag="balance_changed"):
    """An account's balance after a committed batch that moved it by a deposit, withdrawal or
    credit (bet events carry their own `balance`, so they need no separate frame)."""

    address: str
    available: int
    locked: int
    at: int


class EntryPosted(Frozen, frozen=True, tag="entry_posted"):
    """A deposit / withdrawal / adjustment committed (answers the HTTP call that asked for it)."""

    ref: str
    entry: LedgerEntry | None  # None when refused
    error: str | None = None  # e.g. insufficient_funds


Committed = BetConfirmed | BetRejected | BetResolved | BalanceChanged | EntryPosted


# ── core ⇄ edges over Redis Streams (scale-out; `actors/bus.py` carries them) ───────────────────
# Every bus message is one of these tagged Structs, encoded with msgpack. `epoch` names one run of
# the core (a restart starts a new one) and `seq` numbers its committed batches, so an edge can
# tell a gap (events it will never see: it closes its WS clients 1013, they resync over HTTP).

# Edge → core: the writer's requests that an edge may make (a bet, deposit, withdrawal, credit).
BusRequest = PlaceBet | Deposit | Withdrawal | AdminCredit


class CommittedBatch(Frozen, frozen=True, tag="committed"):
    """Core → edges: what one commit published, in order."""

    epoch: str
    seq: int  # 0, 1, 2, … within `epoch`
    events: tuple[Committed, ...]


class MarketState(Frozen, frozen=True, tag="market_state"):
    """Core → edges: a tick the core's market accepted, with the σ and tick interval it prices
    with, so an edge's mirror quotes exactly what the core would."""

    tick: Tick
    sigma: float
    interval_ms: int


class CoreAlive(Frozen, frozen=True, tag="core_alive"):
    """Core → edges, a few times a second: the core is running, and its breaker is in this
    state (an edge that missed a `BreakerChanged` still converges)."""

    epoch: str
    at: int  # ms
    breaker: BreakerStateName
    reason: str
    backlog: int  # bus requests waiting for the core (stream length), for the edges' 503


MarketBusMessage = MarketState | BreakerChanged | CoreAlive


# ── HTTP request bodies (client → edge) ───────────────────────────────────────────────────────
# Every field of a body or frame a client sends is bounded here, at decoding (API.md "Bounds"):
# a value outside its range is `400 invalid_request` (HTTP) or an `error` frame (WS) naming the
# field, before any handler runs. Nothing unbounded reaches the hot state or the writer, where an
# integer past ±2⁶³ would not even bind to SQLite (DESIGN, "More pitfalls").

MAX_SAFE_INT = 2**53 - 1  # the largest integer every JSON client reads exactly
# The ceiling of any multiplier a market may be configured with (config.py checks
# `max_multiplier_bps` against it); the desk refuses `min_multiplier_bps` above the market's own.
MAX_MULTIPLIER_BPS = 1_000_000_000

Amount = Annotated[int, Meta(ge=1, le=MAX_SAFE_INT)]  # units
SignedAmount = Annotated[int, Meta(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]  # units, an adjustment
MultiplierFloor = Annotated[int, Meta(ge=0, le=MAX_MULTIPLIER_BPS)]  # bps, 0 = no slippage guard
TimestampMs = Annotated[int, Meta(ge=0, le=MAX_SAFE_INT)]
ChainId = Annotated[int, Meta(ge=1, le=MAX_SAFE_INT)]
Nonce = Annotated[str, Meta(min_length=16, max_length=64, pattern="^[A-Za-z0-9_-]+$")]
# Format checks with a precise answer (bad_signature, unknown address…) stay with the handlers;
# these lengths only keep what they are handed small.
AddressText = Annotated[str, Meta(max_length=64)]  # "0x" + 40 hex
SignatureText = Annotated[str, Meta(max_length=256)]  # 128 hex (Ed25519), "0x" + 130 hex (EIP-191)
CellIdText = Annotated[str, Meta(max_length=128)]  # "{symbol}:{col}:{row}"
SiweMessage = Annotated[str, Meta(max_length=4096)]  # an EIP-4361 message is ~600 characters
TokenText = Annotated[str, Meta(max_length=256)]  # a session token is 114 (tap/sessions.py)
ReasonText = Annotated[str, Meta(max_length=256)]  # an operator's note
ReqId = Annotated[str, Meta(max_length=64)]  # echoed back: never more than this
ChannelName = Annotated[str, Meta(max_length=64)]  # "prices:BTC-USD", "grid:…", "account"
# Duplicates count once and at most 16 distinct channels are served (API.md); the list itself may
# repeat a few, but a frame never carries more than this many names to look at.
Channels = Annotated[list[ChannelName], Meta(max_length=64)]


class Wire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ChallengeRequest(Wire):
    address: AddressText


class LoginRequest(Wire):
    message: SiweMessage
    signature: SignatureText


class BetRequest(Wire):
    cell_id: CellIdText
    amount: Amount
    nonce: Nonce
    timestamp: TimestampMs
    chain_id: ChainId
    signature: SignatureText
    min_multiplier_bps: MultiplierFloor = 0


class DepositRequest(Wire):
    amount: Amount


class WithdrawalRequest(Wire):
    amount: Amount
    nonce: Nonce
    timestamp: TimestampMs
    chain_id: ChainId
    signature: SignatureText


class BreakerRequest(Wire):
    mode: BreakerMode


class CreditRequest(Wire):
    address: AddressText
    amount: SignedAmount
    reason: ReasonText


# ── WebSocket, client → server ────────────────────────────────────────────────────────────────


class WsIn(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    pass


class WsAuth(WsIn, tag="auth"):
    token: TokenText


class WsSubscribe(WsIn, tag="subscribe"):
    channels: Channels


class WsUnsubscribe(WsIn, tag="unsubscribe"):
    channels: Channels


class WsPlaceBet(WsIn, tag="place_bet"):
    req_id: ReqId
    cell_id: CellIdText
    amount: Amount
    nonce: Nonce
    timestamp: TimestampMs
    chain_id: ChainId
    signature: SignatureText
    min_multiplier_bps: MultiplierFloor = 0
    # "queue" (default): `bet_ack` once queued, then `bet_confirmed`/`bet_rejected` on `account`.
    # "commit": no `bet_ack`; the one answer is `bet_confirmed`/`bet_rejected` carrying `req_id`.
    ack: Literal["queue", "commit"] = "queue"


class WsPing(WsIn, tag="ping"):
    req_id: ReqId | None = None


ClientFrame = WsAuth | WsSubscribe | WsUnsubscribe | WsPlaceBet | WsPing


# ── WebSocket, server → client ────────────────────────────────────────────────────────────────


class WsOut(msgspec.Struct, tag_field="type", kw_only=True):
    pass


class WsPrice(WsOut, tag="price"):
    symbol: str
    ts: int
    price: int


class GridCell(msgspec.Struct, kw_only=True):
    cell_id: str
    t_start: int
    t_end: int
    price_lo: int
    price_hi: int
    multiplier_bps: int
    placeable: bool


class GridView(msgspec.Struct, kw_only=True):
    """GET /api/grid/{symbol}, and the body of the WS `grid` message."""

    symbol: str
    as_of: int
    price: int
    volatility: float
    house_edge_bps: int
    # The pricing parameters beyond σ, price and as_of (docs/pricing.md): the method's name, the
    # tick interval Δ the quotes assume (ms) and its first tick: ticks at next_tick_ms + k·Δ.
    pricing_model: str  # "discrete_ticks": P is the chance that a tick lands in the band
    monitoring_interval_ms: int
    next_tick_ms: int
    breaker: BreakerStateName
    cells: list[GridCell]


class WsGrid(WsOut, tag="grid"):
    symbol: str
    as_of: int
    price: int
    volatility: float
    house_edge_bps: int
    # The pricing parameters beyond σ, price and as_of (docs/pricing.md): the method's name, the
    # tick interval Δ the quotes assume (ms) and its first tick: ticks at next_tick_ms + k·Δ.
    pricing_model: str  # "discrete_ticks": P is the chance that a tick lands in the band
    monitoring_interval_ms: int
    next_tick_ms: int
    breaker: BreakerStateName
    cells: list[GridCell]


class WsBreaker(WsOut, tag="breaker"):
    state: BreakerStateName
    reason: str


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str


class WsBetAck(WsOut, tag="bet_ack"):
    req_id: str
    bet: Bet


class WsError(WsOut, tag="error"):
    req_id: str | None
    error: ErrorBody


class WsBetConfirmed(WsOut, tag="bet_confirmed", omit_defaults=True):
    bet: Bet
    balance: Balance | None = None  # always set by the server; omitted only if unknown
    req_id: str | None = None  # set for the `place_bet` with `"ack": "commit"` that placed it


class WsBetRejected(WsOut, tag="bet_rejected", omit_defaults=True):
    bet: Bet
    reason: str
    balance: Balance | None = None
    req_id: str | None = None


class WsBetResolved(WsOut, tag="bet_resolved", omit_defaults=True):
    bet: Bet
    balance: Balance | None = None


class WsBalance(WsOut, tag="balance"):
    available: int
    locked: int


class WsPong(WsOut, tag="pong"):
    req_id: str | None


ServerFrame = (
    WsPrice
    | WsGrid
    | WsBreaker
    | WsBetAck
    | WsError
    | WsBetConfirmed
    | WsBetRejected
    | WsBetResolved
    | WsBalance
    | WsPong
)
MARKET_DATA = (WsPrice, WsGrid)  # coalescible for slow clients; everything else is account data
