"""`tap replay`: re-resolve stored bets from the stored tick log and name every disagreement.

It decides which bets and ticks a time range means, and what counts as a mismatch: a resolved
bet whose re-resolution by `tap.resolver.replay` — the same rules the live resolver applies —
differs in status, payout or deciding tick (`decided_by`). It leaves the rules themselves to
`tap.resolver`, and what to do about a mismatch to the operator (the CLI exits non-zero).

Several trades may share a millisecond (issue 9, defect 5). The log keeps them as a set per
millisecond (its key is `(symbol, ts, price)`), so the order in which they arrived — which one the
live resolver met first — is not recorded, and replay reads them in price order. Which tick of a
millisecond decided a bet is therefore checked as: the same millisecond as the replay's, a price the
log holds at that millisecond, and, for a win, a price in the bet's band. Status, payout and
deciding millisecond do not depend on the order within a millisecond and must match exactly.

Bets replayed: status won/lost/void and window inside `[from_ms, to_ms]` (`t_start >= from_ms`,
`t_end <= to_ms`). Ticks used, per symbol: from the earliest such window through the first tick
after the latest stored decision (or window end), plus the time of the tick just before the
earliest window, so a gap into the first window is seen exactly as the live resolver saw it.

Limits worth knowing: ticks are kept `archive.tick_retention_days`, so older bets cannot be
replayed faithfully (missing ticks turn into gaps); a bet whose cell is not on the market's
*current* grid (the config changed since) is reported as not replayable rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from tap.config import Config
from tap.messages import Outcome
from tap.resolver import OpenBet, replay
from tap.store import connect

_COLUMNS = (
    "bet_id, address, symbol, col, row, t_start, t_end, price_lo, price_hi, amount, "
    "multiplier_bps, status, payout, decided_ts, decided_price, reason"
)


def _open_existing(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no database at {path}")
    return connect.open_connection(path, read_only=True)


def _decided(ts: int | None, price: int | None) -> str:
    return "none" if ts is None else f"tick {ts} @ {price}"


def _describe(status: str, payout: int | None, ts: int | None, price: int | None) -> str:
    return f"{status}, payout {payout}, decided by {_decided(ts, price)}"


def _compare(
    stored: dict[str, Any], outcome: Outcome | None, prices_at: dict[int, set[int]]
) -> str | None:
    """One line if the stored resolution and the replayed one differ, else None. `prices_at`:
    the stored tick prices of each millisecond replayed (see the module text)."""
    bet_id = stored["bet_id"]
    was = _describe(
        stored["status"], stored["payout"], stored["decided_ts"], stored["decided_price"]
    )
    if outcome is None:
        return f"bet {bet_id}: stored {was}; the stored ticks do not decide it"
    d = outcome.decided_by
    now_ts, now_price = (None, None) if d is None else (d.ts, d.price)
    if (stored["status"], stored["payout"], stored["decided_ts"], stored["decided_price"]) == (
        outcome.status,
        outcome.payout,
        now_ts,
        now_price,
    ):
        return None
    if (
        (stored["status"], stored["payout"], stored["decided_ts"])
        == (outcome.status, outcome.payout, now_ts)
        and now_ts is not None
        and stored["decided_price"] in prices_at.get(now_ts, ())
        and (
            outcome.status != "won"
            or stored["price_lo"] <= stored["decided_price"] <= stored["price_hi"]
        )
    ):
        return None  # another trade of the deciding millisecond: the log cannot order them
    return (
        f"bet {bet_id}: stored {was}; "
        f"replay {_describe(outcome.status, outcome.payout, now_ts, now_price)}"
    )


def _on_grid(b: dict[str, Any], column_ms: int, row_height: int) -> bool:
    t_start, price_lo = b["col"] * column_ms, b["row"] * row_height
    return (b["t_start"], b["t_end"], b["price_lo"], b["price_hi"]) == (
        t_start,
        t_start + column_ms,
        price_lo,
        price_lo + row_height,
    )


def _replay_symbol(
    conn: sqlite3.Connection,
    symbol: str,
    bets: list[dict[str, Any]],
    *,
    column_ms: int,
    row_height: int,
    max_gap_ms: int,
) -> list[str]:
    mismatches: list[str] = []
    replayable = []
    for b in bets:
        if _on_grid(b, column_ms, row_height):
            replayable.append(b)
        else:
            mismatches.append(
                f"bet {b['bet_id']}: cell ({b['col']}, {b['row']}) is not on the current "
                f"{symbol} grid (column_ms={column_ms}, row_height={row_height}); not replayable"
            )
    if not replayable:
        return mismatches
    first = min(b["t_start"] for b in replayable)
    horizon = max(max(b["t_end"], b["decided_ts"] or 0) for b in replayable)
    prior = conn.execute(
        "SELECT max(ts) FROM ticks WHERE symbol = ? AND ts < ?", (symbol, first)
    ).fetchone()[0]
    ticks = conn.execute(
        "SELECT ts, price FROM ticks WHERE symbol = ? AND ts >= ? AND ts <= ? ORDER BY ts, price",
        (symbol, first, horizon),
    ).fetchall()
    ticks += conn.execute(  # the first millisecond after the horizon closes what is still open
        "SELECT ts, price FROM ticks WHERE symbol = ? AND ts = "
        "(SELECT min(ts) FROM ticks WHERE symbol = ? AND ts > ?) ORDER BY price",
        (symbol, symbol, horizon),
    ).fetchall()
    prices_at: dict[int, set[int]] = defaultdict(set)
    for ts, price in ticks:
        prices_at[int(ts)].add(int(price))
    outcomes = replay(
        [
            OpenBet(
                bet_id=b["bet_id"],
                address=b["address"],
                col=b["col"],
                row=b["row"],
                t_start=b["t_start"],
                t_end=b["t_end"],
                price_lo=b["price_lo"],
                price_hi=b["price_hi"],
                amount=b["amount"],
                multiplier_bps=b["multiplier_bps"],
            )
            for b in replayable
        ],
        [(int(ts), int(price)) for ts, price in ticks],
        column_ms=column_ms,
        row_height=row_height,
        max_gap_ms=max_gap_ms,
        prior_tick_ts=None if prior is None else int(prior),
    )
    by_id = {o.bet_id: o for o in outcomes}
    for b in replayable:
        line = _compare(b, by_id.get(b["bet_id"]), prices_at)
        if line is not None:
            mismatches.append(line)
    return mismatches


def replay_range(cfg: Config, from_ms: int, to_ms: int) -> tuple[list[str], int]:
    """Re-resolve every resolved bet whose window lies in `[from_ms, to_ms]`; return one line
    per mismatch (naming the bet, the stored and the replayed resolution) and how many bets
    were checked. Read-only: safe while the server runs."""
    if to_ms < from_ms:
        raise ValueError(f"--to {to_ms} is before --from {from_ms}")
    conn = _open_existing(cfg.server.db_path)
    try:
        conn.execute("BEGIN")  # one snapshot: bets and ticks as of the same instant
        try:
            cursor = conn.execute(
                f"SELECT {_COLUMNS} FROM bets WHERE status IN ('won', 'lost', 'void') "
                "AND t_start >= ? AND t_end <= ? ORDER BY symbol, t_start, seq",
                (from_ms, to_ms),
            )
            names = [d[0] for d in cursor.description]
            by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in cursor:
                bet = dict(zip(names, row, strict=True))
                by_symbol[bet["symbol"]].append(bet)
            mismatches: list[str] = []
            checked = 0
            for symbol, bets in sorted(by_symbol.items()):
                checked += len(bets)
                market = cfg.market(symbol)
                if market is None:
                    mismatches += [
                        f"bet {b['bet_id']}: no market {symbol} in the config; not replayable"
                        for b in bets
                    ]
                    continue
                mismatches += _replay_symbol(
                    conn,
                    symbol,
                    bets,
                    column_ms=market.column_ms,
                    row_height=market.row_height,
                    max_gap_ms=cfg.feed.max_gap_ms,
                )
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()
    return mismatches, checked
