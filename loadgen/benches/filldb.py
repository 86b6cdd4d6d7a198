"""A production-sized ledger database for restore drills and storage measurements.

`python -m loadgen.benches.filldb --db PATH --entries 1000000 --tick-days 7` writes, through the
real
writer (`tap.store.write.apply_batch`, the batcher's own function), deposits for `--accounts`
players, then bets and their settlements until the ledger holds `--entries` rows, and the
ticks of `--tick-days` days at `--tick-ms`. The result passes `tap check`, so `tap backup`,
`tap restore` (which verifies a backup before using it) and `tap archive` can be timed on it as
they would run in production (OPERATIONS.md, "Database corruption and restore").

Nothing here is random: the same arguments give the same database.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tap.messages import (
    DecidedBy,
    Deposit,
    Outcome,
    PlaceBet,
    Settle,
    StoreTicks,
    Tick,
    WriterRequest,
)
from tap.store import connect, write

SYMBOL = "BTC-USD"
COLUMN_MS = 5000
ROW_HEIGHT = 1000
PRICE = 10_000_000  # 100000.00 USD in increments
STAKE = 1_000_000  # 1.00 in units
MULTIPLIER_BPS = 29_600
DEPOSIT = 1_000_000_000_000  # enough that no bet is refused for funds
BATCH = 4096  # requests per transaction: the batcher's order of magnitude


def _address(i: int) -> str:
    return f"0x{i:040x}"


def _bet(n: int, accounts: int, start_ms: int, span_ms: int, bets: int) -> PlaceBet:
    """Bet `n`: accounts take turns, spread over the span, each on a column two ahead."""
    at = start_ms + (span_ms * n) // max(1, bets)
    col = at // COLUMN_MS + 2
    row = PRICE // ROW_HEIGHT + (n % 5) - 2
    return PlaceBet(
        bet_id=f"fill-{n:09d}",
        address=_address(n % accounts),
        cell_id=f"{SYMBOL}:{col}:{row}",
        symbol=SYMBOL,
        col=col,
        row=row,
        t_start=col * COLUMN_MS,
        t_end=col * COLUMN_MS + COLUMN_MS,
        price_lo=row * ROW_HEIGHT,
        price_hi=row * ROW_HEIGHT + ROW_HEIGHT,
        amount=STAKE,
        multiplier_bps=MULTIPLIER_BPS,
        nonce=f"fill-nonce-{n:012d}",
        accepted_at=at,
        timestamp=at,
        chain_id=1,
        min_multiplier_bps=0,
        signature="00" * 64,
    )


def _outcome(bet: PlaceBet, n: int) -> Outcome:
    won = n % 3 == 0  # about a third of the bets win, as a fair game at ~3× would have it
    return Outcome(
        bet_id=bet.bet_id,
        address=bet.address,
        status="won" if won else "lost",
        amount=bet.amount,
        payout=bet.amount * bet.multiplier_bps // 10_000 if won else 0,
        decided_by=DecidedBy(ts=bet.t_start + 1000, price=bet.price_lo) if won else None,
        reason="touch" if won else "column_end",
        at=bet.t_end if not won else bet.t_start + 1000,
    )


def _ticks(start_ms: int, end_ms: int, tick_ms: int) -> Iterator[Tick]:
    price = PRICE
    for i, ts in enumerate(range(start_ms, end_ms, tick_ms)):
        price += (i * 7919) % 21 - 10  # a deterministic wiggle of ±10 increments
        yield Tick(symbol=SYMBOL, ts=ts, price=price)


def fill(
    path: Path,
    *,
    entries: int,
    accounts: int,
    tick_days: float,
    tick_ms: int,
    now_ms: int,
    progress: bool = False,
) -> dict[str, int]:
    """Write the database at `path` (which must not exist); return the row counts."""
    if path.exists():
        raise FileExistsError(f"{path} exists; filldb only creates new databases")
    if entries < accounts:
        raise ValueError("--entries must be at least --accounts (one deposit each)")
    conn = connect.open_writer(path)
    span_ms = int(tick_days * 86_400_000) or 3_600_000
    start_ms = now_ms - span_ms
    bets = (entries - accounts) // 2  # a stake row and a payout row each
    if bets and accounts * span_ms // bets < COLUMN_MS:
        # An account's next bet would land in the same cell and be rejected (no ledger rows).
        raise ValueError("too few --accounts for that many bets over --tick-days")

    def apply(requests: Sequence[WriterRequest], at: int) -> None:
        write.apply_batch(conn, requests, at)

    try:
        deposits = [
            Deposit(address=_address(i), amount=DEPOSIT, ref=f"fill-deposit-{i}", at=start_ms)
            for i in range(accounts)
        ]
        for i in range(0, accounts, BATCH):
            apply(deposits[i : i + BATCH], start_ms)
        for first in range(0, bets, BATCH // 2):
            placed = [
                _bet(n, accounts, start_ms, span_ms, bets)
                for n in range(first, min(bets, first + BATCH // 2))
            ]
            settle = Settle(outcomes=tuple(_outcome(b, first + k) for k, b in enumerate(placed)))
            apply([*placed, settle], placed[-1].accepted_at)
            if progress and first % (BATCH * 50) == 0:
                print(f"  bets {first:,}/{bets:,}", file=sys.stderr, flush=True)
        if tick_days > 0:
            batch: list[Tick] = []
            for tick in _ticks(start_ms, now_ms, tick_ms):
                batch.append(tick)
                if len(batch) == BATCH * 4:
                    apply([StoreTicks(ticks=tuple(batch))], tick.ts)
                    batch = []
            if batch:
                apply([StoreTicks(ticks=tuple(batch))], now_ms)
        counts = {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("accounts", "ledger", "bets", "ticks")
        }
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return counts
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.benches.filldb", description=__doc__)
    parser.add_argument("--db", required=True, type=Path, help="the new database file")
    parser.add_argument("--entries", type=int, default=1_000_000, help="ledger rows")
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--tick-days", type=float, default=7.0, help="days of ticks (0: none)")
    parser.add_argument("--tick-ms", type=int, default=250, help="one tick every N ms")
    args = parser.parse_args(argv)
    started = time.monotonic()
    counts = fill(
        args.db,
        entries=args.entries,
        accounts=args.accounts,
        tick_days=args.tick_days,
        tick_ms=args.tick_ms,
        now_ms=int(time.time() * 1000),
        progress=True,
    )
    size = args.db.stat().st_size
    print(
        f"filldb: {args.db}: {counts} rows, {size / 1e6:.1f} MB "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
