"""The read layer: plain functions over any connection, answering in the shapes API.md shows.

Bets (one, by nonce, by ids, an address's pages), balances and ledger pages, ticks (a range, the
newest per symbol, since a time), and what a restarting process reloads: the open bets (the
resolver), every balance with its ledger position (a hot state), recent nonces (replay
protection). Listings are pages, newest first, behind opaque cursors (`encode_cursor`,
`decode_cursor`; a cursor we did not make is `InvalidCursor`, a 400). The decoders of a stored
bet or ledger row (`bet_from_row`, `entry_from_row`) live here too; the write layer uses them to
read back inside its transaction.

What the caller decides: the connection (the edge and the resolver open their own read-only ones
with `tap.store.connect.open_connection`; WAL lets them read while the writer writes), which
thread uses it, and retrying `SQLITE_BUSY`. Nothing here writes.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from tap import ledger
from tap.messages import Bet, DecidedBy, LedgerEntry, PlaceBet, Tick
from tap.store import connect

T = TypeVar("T")

MAX_PAGE = 500  # the largest page any listing returns, whatever `limit` asks for

# ── stored rows ──────────────────────────────────────────────────────────────────────────────

# The columns `bet_from_row` reads, in its order (a listing may append `seq` after them).
BET_COLUMNS = (
    "bet_id, address, cell_id, amount, multiplier_bps, nonce, status, accepted_at, "
    "confirmed_at, resolved_at, payout, decided_ts, decided_price, reason"
)

# The columns `entry_from_row` reads, in its order.
ENTRY_COLUMNS = "entry_id, address, kind, amount, locked_delta, balance_after, ref, at"


def bet_from_row(row: Any) -> Bet:
    """A stored bet as the API shows it, from a row of `BET_COLUMNS`."""
    decided = None if row[11] is None else DecidedBy(ts=row[11], price=row[12])
    return Bet(
        bet_id=row[0],
        address=row[1],
        cell_id=row[2],
        amount=row[3],
        multiplier_bps=row[4],
        nonce=row[5],
        status=row[6],
        accepted_at=row[7],
        confirmed_at=row[8],
        resolved_at=row[9],
        payout=row[10],
        decided_by=decided,
        reason=row[13],
    )


def entry_from_row(row: Any) -> LedgerEntry:
    """A ledger entry as the API shows it, from a row of `ENTRY_COLUMNS`."""
    return LedgerEntry(
        entry_id=row[0],
        address=row[1],
        kind=row[2],
        amount=row[3],
        locked_delta=row[4],
        balance_after=row[5],
        ref=row[6],
        at=row[7],
    )


# ── pages and cursors ────────────────────────────────────────────────────────────────────────


class InvalidCursor(ValueError):
    """A paging cursor this server did not make (answer 400 invalid_request)."""


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """One page of a listing, newest first, as API.md shows it."""

    items: list[T]
    next_cursor: str | None  # opaque; None on the last page


class TickPage(msgspec.Struct, kw_only=True):
    ticks: list[Tick]
    next_from: int | None  # pass as `from_ts` for the next page; None when the range is done


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"c{position}".encode()).rstrip(b"=").decode()


MAX_CURSOR_CHARS = 128  # API.md bounds: cursors are opaque strings of at most 128 characters


def decode_cursor(cursor: str) -> int:
    """The position a cursor of ours names; `InvalidCursor` for anything else, including one
    whose number SQLite could not bind (beyond 2⁶³ − 1)."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor(f"cursor: at most {MAX_CURSOR_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidCursor(f"cursor {cursor!r} is not one of ours") from e
    if not raw.startswith("c") or not raw[1:].isascii() or not raw[1:].isdigit():
        raise InvalidCursor(f"cursor {cursor!r} is not one of ours")
    position = int(raw[1:])
    if position > 2**63 - 1:
        raise InvalidCursor(f"cursor {cursor!r} is not one of ours")
    return position


def _page_size(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return min(limit, MAX_PAGE)


def get_bet(conn: sqlite3.Connection, bet_id: str) -> Bet | None:
    row = conn.execute(f"SELECT {BET_COLUMNS} FROM bets WHERE bet_id = ?", (bet_id,)).fetchone()
    return None if row is None else bet_from_row(row)


def bets_by_ids(conn: sqlite3.Connection, bet_ids: Sequence[str]) -> dict[str, Bet]:
    """The bets among `bet_ids` that the ledger holds, by id (at most 500 ids per call)."""
    if len(bet_ids) > MAX_PAGE:
        raise ValueError(f"at most {MAX_PAGE} ids per call")
    if not bet_ids:
        return {}
    marks = ", ".join("?" * len(bet_ids))
    rows = conn.execute(f"SELECT {BET_COLUMNS} FROM bets WHERE bet_id IN ({marks})", bet_ids)
    return {b.bet_id: b for b in map(bet_from_row, rows)}


def get_bet_by_nonce(conn: sqlite3.Connection, address: str, nonce: str) -> Bet | None:
    row = conn.execute(
        f"SELECT {BET_COLUMNS} FROM bets WHERE address = ? AND nonce = ?", (address, nonce)
    ).fetchone()
    return None if row is None else bet_from_row(row)


def list_bets(
    conn: sqlite3.Connection,
    address: str,
    *,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Bet]:
    """An address's bets, newest first, optionally only one status (`InvalidCursor` on a
    cursor we did not make)."""
    size = _page_size(limit)
    before = decode_cursor(cursor) if cursor is not None else None
    where = "address = ?"
    params: list[object] = [address]
    if status is not None:
        where += " AND status = ?"
        params.append(status)
    if before is not None:
        where += " AND seq < ?"
        params.append(before)
    rows = conn.execute(
        f"SELECT {BET_COLUMNS}, seq FROM bets WHERE {where} ORDER BY seq DESC LIMIT ?",
        (*params, size + 1),
    ).fetchall()
    items = [bet_from_row(r) for r in rows[:size]]
    next_cursor = encode_cursor(int(rows[size - 1][14])) if len(rows) > size else None
    return Page(items=items, next_cursor=next_cursor)


def get_balance(conn: sqlite3.Connection, address: str) -> ledger.Account:
    """The account's balances; an address that never received money has zero of both."""
    row = conn.execute(
        "SELECT available, locked FROM accounts WHERE address = ?", (address,)
    ).fetchone()
    return ledger.Account() if row is None else ledger.Account(int(row[0]), int(row[1]))


def ledger_page(
    conn: sqlite3.Connection, address: str, *, limit: int = 50, cursor: str | None = None
) -> Page[LedgerEntry]:
    """An address's ledger rows, newest first."""
    size = _page_size(limit)
    before = decode_cursor(cursor) if cursor is not None else None
    sql = f"SELECT {ENTRY_COLUMNS} FROM ledger WHERE address = ?"
    params: list[object] = [address]
    if before is not None:
        sql += " AND entry_id < ?"
        params.append(before)
    rows = conn.execute(sql + " ORDER BY entry_id DESC LIMIT ?", (*params, size + 1)).fetchall()
    items = [entry_from_row(r) for r in rows[:size]]
    next_cursor = encode_cursor(items[-1].entry_id) if len(rows) > size else None
    return Page(items=items, next_cursor=next_cursor)


def ticks_range(
    conn: sqlite3.Connection,
    symbol: str,
    from_ts: int | None = None,
    to_ts: int | None = None,
    *,
    limit: int = 1000,
) -> TickPage:
    """Ticks with `from_ts <= ts < to_ts`, oldest first, at most about `limit` of them.

    A page never splits a millisecond: `next_from` is a timestamp none of whose ticks are on
    this page, so passing it back as `from_ts` neither skips nor repeats a tick. (A page grows
    past `limit` only when more than `limit` ticks share one millisecond.)
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    lo = from_ts if from_ts is not None else -(2**63)
    hi = to_ts if to_ts is not None else 2**63 - 1
    rows = conn.execute(
        "SELECT ts, price FROM ticks WHERE symbol = ? AND ts >= ? AND ts < ? "
        "ORDER BY ts, price LIMIT ?",
        (symbol, lo, hi, limit + 1),
    ).fetchall()
    if len(rows) <= limit:
        return TickPage(ticks=[Tick(symbol=symbol, ts=t, price=p) for t, p in rows], next_from=None)
    next_from: int | None = int(rows[limit][0])
    kept = [r for r in rows[:limit] if r[0] != next_from]
    if not kept:  # the whole page is one millisecond: return all of it
        kept = conn.execute(
            "SELECT ts, price FROM ticks WHERE symbol = ? AND ts = ? ORDER BY price",
            (symbol, next_from),
        ).fetchall()
        following = conn.execute(
            "SELECT min(ts) FROM ticks WHERE symbol = ? AND ts > ? AND ts < ?",
            (symbol, next_from, hi),
        ).fetchone()[0]
        next_from = None if following is None else int(following)
    return TickPage(
        ticks=[Tick(symbol=symbol, ts=t, price=p) for t, p in kept], next_from=next_from
    )


def _symbols(conn: sqlite3.Connection) -> list[str]:
    """Every symbol with stored ticks, by walking the primary key: one seek per symbol rather
    than a scan of a week of ticks."""
    return [
        r[0]
        for r in conn.execute(
            "WITH RECURSIVE s(symbol) AS (SELECT min(symbol) FROM ticks UNION ALL "
            "SELECT (SELECT min(symbol) FROM ticks WHERE symbol > s.symbol) FROM s "
            "WHERE s.symbol IS NOT NULL) SELECT symbol FROM s WHERE symbol IS NOT NULL"
        )
    ]


def last_ticks(conn: sqlite3.Connection) -> dict[str, Tick]:
    """The newest stored tick of every symbol (the breaker's and hub's restart point)."""
    newest: dict[str, Tick] = {}
    for symbol in _symbols(conn):
        ts, price = conn.execute(
            "SELECT ts, price FROM ticks WHERE symbol = ? ORDER BY ts DESC, price DESC LIMIT 1",
            (symbol,),
        ).fetchone()
        newest[symbol] = Tick(symbol=symbol, ts=int(ts), price=int(price))
    return newest


def last_tick_before(conn: sqlite3.Connection, ts: int) -> dict[str, int]:
    """Per symbol, the time of the newest stored tick before `ts` (symbols without one are
    absent): with `ticks_since(ts)`, what the resolver needs to see a gap into a window."""
    before: dict[str, int] = {}
    for symbol in _symbols(conn):
        row = conn.execute(
            "SELECT max(ts) FROM ticks WHERE symbol = ? AND ts < ?", (symbol, ts)
        ).fetchone()
        if row[0] is not None:
            before[symbol] = int(row[0])
    return before


def ticks_since(conn: sqlite3.Connection, from_ts: int) -> list[Tick]:
    """Every stored tick with `ts >= from_ts`, in time order within each symbol (the resolver's
    reload after a restart, from the earliest open bet's `t_start`; at most the retention)."""
    return [
        Tick(symbol=symbol, ts=int(ts), price=int(price))
        for symbol in _symbols(conn)
        for ts, price in conn.execute(
            "SELECT ts, price FROM ticks WHERE symbol = ? AND ts >= ? ORDER BY ts, price",
            (symbol, from_ts),
        )
    ]


_PLACE_BET_FIELDS = PlaceBet.__struct_fields__  # every column of a bet as placed


def open_bets(conn: sqlite3.Connection, *, symbol: str | None = None) -> list[PlaceBet]:
    """Every confirmed, unresolved bet as it was placed (cell geometry, locked quote), oldest
    column first: what the resolver indexes at startup."""
    sql = f"SELECT {', '.join(_PLACE_BET_FIELDS)} FROM bets WHERE status = 'confirmed'"
    params: tuple[object, ...] = ()
    if symbol is not None:
        sql += " AND symbol = ?"
        params = (symbol,)
    rows = conn.execute(sql + " ORDER BY symbol, col, row, seq", params).fetchall()
    return [PlaceBet(**dict(zip(_PLACE_BET_FIELDS, r, strict=True))) for r in rows]


def all_balances(conn: sqlite3.Connection) -> dict[str, int]:
    """address → available, for `HotState.rebuild` at startup."""
    return {a: int(v) for a, v in conn.execute("SELECT address, available FROM accounts")}


# An account's ledger position: its highest entry_id (the index on (address, entry_id) finds it
# in one seek per account, instead of the whole ledger a join and GROUP BY would scan).
_POSITION = "COALESCE((SELECT max(entry_id) FROM ledger WHERE address = a.address), 0)"


def available_through(conn: sqlite3.Connection, address: str) -> tuple[int, int]:
    """(available, the highest entry_id of the address) from one statement, so one snapshot:
    the available holds exactly the address's entries up to that id. (0, 0) without an account.
    What a hot state seeds a balance from (`tap/store/redis_hot.py`, "Ledger positions")."""
    row = conn.execute(
        f"SELECT a.available, {_POSITION} FROM accounts a WHERE a.address = ?", (address,)
    ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def all_available_through(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """`available_through` for every account, from one statement (one snapshot): what a hot
    state rebuilds every balance from."""
    rows = conn.execute(f"SELECT a.address, a.available, {_POSITION} FROM accounts a")
    return {str(a): (int(v), int(t)) for a, v, t in rows}


def recent_nonces(conn: sqlite3.Connection, since_ms: int) -> list[tuple[str, str, int]]:
    """(address, nonce, at) of bets and withdrawals accepted since `since_ms`: what the hot
    state must remember so a replay inside the timestamp window is refused at admission."""
    rows = conn.execute(
        "SELECT address, nonce, accepted_at FROM bets WHERE accepted_at >= ?1"
        " UNION ALL SELECT address, nonce, at FROM withdrawals WHERE at >= ?1",
        (since_ms,),
    )
    return [(str(a), str(n), int(t)) for a, n, t in rows]


def read_balances_now(path: str | Path) -> dict[str, int]:
    """`all_balances` on a fresh read-only connection, synchronously: for the rare caller that
    must read and act without yielding in between (in-memory hot-state rebuild)."""
    conn = connect.open_connection(path, read_only=True)
    try:
        return all_balances(conn)
    finally:
        conn.close()
