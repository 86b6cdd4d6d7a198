"""The bet desk: admission of one signed bet, shared by `POST /api/bets` and the WS `place_bet`.

Checks run cheapest first, and nothing stateful is touched until every local check has passed:

1. decode (the caller, msgspec strict)                → 400 invalid_request
2. session token (the caller)                         → 401 unauthorized
3. chain id                                           → 401 wrong_chain
4. timestamp window |now − ts| ≤ max_skew_ms          → 401 stale_timestamp
5. nonce format, amount type                          → 400 invalid_request
6. Ed25519 signature by the session key (~55 µs)      → 401 bad_signature
7. breaker                                            → 503 breaker_open
8. grid rules + cached quote (multiplier locked here) → 422 cell_not_placeable | amount_out_of_range
                                                         | multiplier_below_minimum | exposure_limit
9. hot state, one atomic call: rate token → nonce → one bet per cell → reserve stake
                                                      → 429 rate_limited | 409 replayed_nonce
                                                        | 409 duplicate_cell_bet
                                                        | 422 insufficient_funds
10. hand-over to the writer, `send_nowait`            → 503 overloaded (hold and nonce undone)

Why this order: steps 3–6 need no shared state, so garbage and forgeries cost one signature
check at most and never burn a nonce, a rate token or a reservation belonging to the real owner
(a forged request must not be able to rate-limit its victim). The rate token is taken inside the
same hot-state call as the nonce and the reservation (step 9) so that with Redis one round trip
decides all four atomically; a bet refused by the breaker or the grid therefore costs no token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from tap.admission import SessionKey, bet_payload, timestamp_ok, valid_nonce
from tap.config import Config, MarketConfig
from tap.errors import ApiError
from tap.hotstate import HotState, HotStateUnavailable
from tap.messages import Bet, BetRequest, PlaceBet, WriterRequest
from tap.quotes import Quote, QuoteRefusal
from tap.runtime import metrics
from tap.sessions import Session


class MarketView(Protocol):
    def quote_cell(self, cell_id: str, now_ms: int) -> Quote | QuoteRefusal:
        """A placeable cell's locked quote, or (code, message) saying why not."""
        ...


class WriterSender(Protocol):
    """Hands a request to the single writer without waiting (DESIGN scale-out seam)."""

    def send_nowait(self, value: WriterRequest) -> None: ...


def bet_id_for(address: str, nonce: str) -> str:
    """Deterministic: the nonce is the idempotency key, so (address, nonce) names the bet."""
    return "b" + hashlib.blake2b(f"{address}|{nonce}".encode(), digest_size=12).hexdigest()


@dataclass
class PendingBets:
    """Bets answered 202 but not yet committed, so GET can show them as `pending`."""

    by_id: dict[str, Bet] = field(default_factory=dict)

    def add(self, bet: Bet) -> None:
        self.by_id[bet.bet_id] = bet

    def pop(self, bet_id: str) -> Bet | None:
        return self.by_id.pop(bet_id, None)

    def get(self, bet_id: str) -> Bet | None:
        return self.by_id.get(bet_id)


class BetDesk:
    def __init__(
        self,
        cfg: Config,
        now_ms: Callable[[], int],
        hot: HotState,
        market: MarketView,
        breaker_open: Callable[[str], bool],
        writer: WriterSender,
        pending: PendingBets,
    ) -> None:
        self.cfg = cfg
        self.now_ms = now_ms
        self.hot = hot
        self.market = market
        self.breaker_open = breaker_open
        self.writer = writer
        self.pending = pending
        self._markets: dict[str, MarketConfig] = {m.symbol: m for m in cfg.markets}
        self._verifiers: dict[str, SessionKey] = {}

    def verifier(self, session: Session) -> SessionKey:
        key = self._verifiers.get(session.session_key)
        if key is None:
            if len(self._verifiers) > 100_000:  # bounded: rebuilt on demand, ~30 µs each
                self._verifiers.clear()
            # The key was validated at login, so this cannot raise for a live session.
            key = self._verifiers[session.session_key] = SessionKey(session.session_key)
        return key

    def check_signed(self, session: Session, chain_id: int, timestamp: int, nonce: str) -> int:
        """Steps 3–5, shared with withdrawals; returns now_ms."""
        now = self.now_ms()
        if chain_id != self.cfg.auth.chain_id:
            raise ApiError("wrong_chain", f"chain_id must be {self.cfg.auth.chain_id}")
        if not timestamp_ok(now, timestamp, self.cfg.auth.max_skew_ms):
            raise ApiError(
                "stale_timestamp",
                f"timestamp is more than {self.cfg.auth.max_skew_ms} ms from server time {now}",
                server_time=now,
            )
        if not valid_nonce(nonce):
            raise ApiError("invalid_request", "nonce: 16-64 characters of [A-Za-z0-9_-]")
        return now

    async def place(self, session: Session, req: BetRequest) -> Bet:
        address = session.address
        now = self.check_signed(session, req.chain_id, req.timestamp, req.nonce)
        payload = bet_payload(
            req.chain_id,
            address,
            req.cell_id,
            req.amount,
            req.nonce,
            req.timestamp,
            req.min_multiplier_bps,
        )
        if not self.verifier(session).verify(payload, req.signature):
            raise ApiError("bad_signature", "signature does not verify with the session key")

        symbol = req.cell_id.partition(":")[0]
        market = self._markets.get(symbol)
        if market is None:
            raise ApiError("cell_not_placeable", f"unknown market {symbol!r}")
        if self.breaker_open(symbol):
            raise ApiError("breaker_open", "price feed is not trusted right now", retry_after_s=5)
        quoted = self.market.quote_cell(req.cell_id, now)
        if not isinstance(quoted, Quote):
            extra = {"retry_after_s": 5} if quoted.code == "breaker_open" else {}
            raise ApiError(quoted.code, quoted.message, **extra)
        if not market.min_stake <= req.amount <= market.max_stake:
            raise ApiError(
                "amount_out_of_range",
                f"amount must be within {market.min_stake}..{market.max_stake}",
                min_stake=market.min_stake,
                max_stake=market.max_stake,
            )
        if quoted.multiplier_bps < req.min_multiplier_bps:
            raise ApiError(
                "multiplier_below_minimum",
                f"multiplier is {quoted.multiplier_bps} bps, below {req.min_multiplier_bps}",
                multiplier_bps=quoted.multiplier_bps,
            )
        if (
            market.max_open_payout
            and req.amount * quoted.multiplier_bps // 10_000 > market.max_open_payout
        ):
            raise ApiError("exposure_limit", f"payout would exceed {market.max_open_payout}")

        bet_id = bet_id_for(address, req.nonce)
        try:
            admit = await self.hot.admit_bet(address, req.nonce, req.cell_id, req.amount, now)
        except HotStateUnavailable:
            raise ApiError(
                "dependency_unavailable", "hot state store is unavailable", retry_after_s=1
            ) from None
        if not admit.ok:
            reason = admit.reason or "invalid_request"
            if reason == "rate_limited":
                raise ApiError(
                    "rate_limited",
                    "too many bets; slow down",
                    retry_after_s=max(1, -(-admit.retry_after_ms // 1000)),
                    limit=self.cfg.limits.burst,
                )
            if reason == "replayed_nonce":
                raise ApiError("replayed_nonce", "nonce already used", bet_id=bet_id)
            raise ApiError(reason, _REASON_TEXT.get(reason, reason))

        request = PlaceBet(
            bet_id=bet_id,
            address=address,
            cell_id=req.cell_id,
            symbol=quoted.symbol,
            col=quoted.col,
            row=quoted.row,
            t_start=quoted.t_start,
            t_end=quoted.t_end,
            price_lo=quoted.price_lo,
            price_hi=quoted.price_hi,
            amount=req.amount,
            multiplier_bps=quoted.multiplier_bps,
            nonce=req.nonce,
            accepted_at=now,
            timestamp=req.timestamp,
            chain_id=req.chain_id,
            min_multiplier_bps=req.min_multiplier_bps,
            signature=req.signature,
        )
        bet = Bet(
            bet_id=bet_id,
            address=address,
            cell_id=req.cell_id,
            amount=req.amount,
            multiplier_bps=quoted.multiplier_bps,
            nonce=req.nonce,
            status="pending",
            accepted_at=now,
        )
        self.pending.add(bet)
        try:
            self.writer.send_nowait(request)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.pending.pop(bet_id)  # the caller counts the refusal, as for every other one
            try:
                await self.hot.release(address, req.amount, cell_id=req.cell_id, nonce=req.nonce)
            except HotStateUnavailable:
                pass  # the reservation stays held: safe direction, rebuilt on recovery
            raise ApiError(
                "overloaded", "bet queue is full; retry shortly", retry_after_s=1
            ) from None
        metrics.BETS.labels("accepted").inc()
        return bet


_REASON_TEXT = {
    "duplicate_cell_bet": "you already have a bet on this cell",
    "insufficient_funds": "available balance is below the stake",
}
