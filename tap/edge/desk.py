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
import logging
from collections.abc import Callable
from typing import Protocol

import trio

from tap.admission import SessionKey, verify_bet
from tap.config import Config, MarketConfig
from tap.errors import ApiError
from tap.hotstate import Admit, HotState, HotStateUnavailable
from tap.messages import Bet, BetRequest, PlaceBet, WriterRequest, project
from tap.pending import PendingBets
from tap.quotes import Quote, QuoteRefusal
from tap.runtime import logs, metrics
from tap.sessions import Session

log = logging.getLogger("tap.desk")


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

    def _local_checks(self, req: BetRequest, now: int) -> Quote:
        """Steps 7–8: breaker, grid and quote, stake and payout limits (no shared state)."""
        symbol = req.cell_id.partition(":")[0]
        market = self._markets.get(symbol)
        if market is None:
            raise ApiError("cell_not_placeable", f"unknown market {symbol!r}")
        if req.min_multiplier_bps > market.max_multiplier_bps:
            # API.md bounds: 0…max_multiplier_bps (the decoder only knows the global ceiling).
            raise ApiError(
                "invalid_request",
                f"min_multiplier_bps: must be within 0..{market.max_multiplier_bps}",
            )
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
        payout = req.amount * quoted.multiplier_bps // 10_000
        limit = market.max_bet_payout
        if limit and payout > limit:
            raise ApiError("exposure_limit", f"a bet's payout may not exceed {limit}")
        # The cell's sum is the writer's to judge (it sees every open bet); a bet past the cap
        # on its own is refused here at once.
        cap = market.max_cell_liability
        if cap and payout > cap:
            raise ApiError("exposure_limit", f"the payouts of one cell may not exceed {cap}")
        return quoted

    async def _refuse_replay(self, address: str, nonce: str) -> None:
        try:
            seen = await self.hot.nonce_seen(address, nonce)
        except HotStateUnavailable:
            return
        if seen:
            raise ApiError(
                "replayed_nonce", "nonce already used", bet_id=bet_id_for(address, nonce)
            )

    async def place(self, session: Session, req: BetRequest) -> Bet:
        bet, _ = await self.place_with_admission(session, req)
        return bet

    async def place_with_admission(self, session: Session, req: BetRequest) -> tuple[Bet, Admit]:
        """`place`, and the hot state's answer (rate tokens left, for `RateLimit-*`)."""
        address = session.address
        now = self.now_ms()
        if session.expires_at <= now:  # a WS session outlives its token otherwise
            raise ApiError("unauthorized", "session expired; log in again")
        refusal = verify_bet(
            now,
            chain_id=self.cfg.auth.chain_id,
            max_skew_ms=self.cfg.auth.max_skew_ms,
            session_key=self.verifier(session),
            address=address,
            bet=req,
        )
        if refusal is not None:
            raise signed_request_error(refusal, self.cfg, now)
        try:
            quoted = self._local_checks(req, now)
        except ApiError as err:
            # A replayed nonce is a replay whatever the market does now: it answers 409 even
            # while the breaker is open or the cell has moved on (e.g. right after a restart).
            await self._refuse_replay(address, req.nonce)
            raise err from None

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

        # The quote's cell geometry and locked multiplier, the request's stake and signed fields
        # (its cell id as the player signed it).
        request = project(
            PlaceBet, quoted, req, bet_id=bet_id, address=address, cell_id=req.cell_id,
            accepted_at=now,
        )  # fmt: skip
        bet = request.as_bet()
        self.pending.add(bet, logs.REQUEST_ID.get())
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
        metrics.child(metrics.BETS, "accepted", "").inc()
        log.info("bet accepted", extra={"bet_id": bet_id, "address": address})
        return bet, admit


def signed_request_error(code: str, cfg: Config, now: int) -> ApiError:
    """The API error for a refusal of `tap.admission`'s signed-request checks."""
    if code == "wrong_chain":
        return ApiError("wrong_chain", f"chain_id must be {cfg.auth.chain_id}")
    if code == "stale_timestamp":
        return ApiError(
            "stale_timestamp",
            f"timestamp is more than {cfg.auth.max_skew_ms} ms from server time {now}",
            server_time=now,
        )
    if code == "bad_signature":
        return ApiError("bad_signature", "signature does not verify with the session key")
    return ApiError("invalid_request", "nonce: 16-64 characters of [A-Za-z0-9_-]")


_REASON_TEXT = {
    "duplicate_cell_bet": "you already have a bet on this cell",
    "insufficient_funds": "available balance is below the stake",
}
