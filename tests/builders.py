"""Value builders shared by the store, batcher, integrity, backup and archive tests."""

from __future__ import annotations

from tap.messages import PlaceBet

NOW = 1_732_290_000_000  # ms
COLUMN_MS = 5000


def placed_bet(
    n: int,
    address: str = "0xaa",
    amount: int = 1_000,
    *,
    at: int = NOW,
    col: int = 100,
    symbol: str = "BTC-USD",
    multiplier_bps: int = 30_000,
) -> PlaceBet:
    """Bet number `n` of a test: row `n` of column `col`, nonce and id derived from `n`."""
    return PlaceBet(
        bet_id=f"bet-{n}",
        address=address,
        cell_id=f"{symbol}:{col}:{n}",
        symbol=symbol,
        col=col,
        row=n,
        t_start=col * COLUMN_MS,
        t_end=col * COLUMN_MS + COLUMN_MS,
        price_lo=n * 1000,
        price_hi=n * 1000 + 1000,
        amount=amount,
        multiplier_bps=multiplier_bps,
        nonce=f"nonce-{n:012d}",
        accepted_at=at,
        timestamp=at,
        chain_id=31337,
        min_multiplier_bps=0,
        signature="ab" * 64,
    )
