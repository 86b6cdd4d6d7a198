"""The integrity check: does the stored ledger agree with the balances and the bets?

`integrity_check(conn)` re-derives, from the ledger rows alone, what every balance and every bet
must look like under `tap.ledger`'s rules and lists each disagreement as one human sentence; an
empty list means the database is consistent. It only reads (run it on its own read connection, a
WAL snapshot, while the writer keeps writing). Acting on the findings — a metric, an alert,
refusing to start — is the caller's decision.

Checked first: every money column holds an integer (SQLite silently stores an overflowing sum as
a REAL; the writer's ceiling keeps that from happening, this would show it if it did). Per
account: nothing negative; Σ amount == available, Σ locked_delta == locked (counting
the sums the archiver moved to `archived_totals`); every row's `balance_after` follows from the
previous one; locked == Σ stakes of its confirmed bets. Per bet: its rows are exactly
`ledger.bet_movements(status, …)` (confirmed: one stake; won: stake + payout; lost: stake + a
payout of 0; void: stake + refund; rejected: none), on its own address, and its `payout` field
matches. And no stake/payout/refund row points at a bet that does not exist, and each cell's
tracked liability is the sum of its open bets' potential payouts.

The archiver's side of the bargain: it removes a resolved bet together with all its rows, and an
address's rows only as a prefix in entry_id order, adding their sums to `archived_totals` in the
same transaction.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator

from tap import ledger

BET_KINDS = ("stake", "payout", "refund")


def _accounts(conn: sqlite3.Connection) -> Iterator[str]:
    rows = conn.execute(
        """
        WITH sums AS (
            SELECT address, sum(amount) AS amount, sum(locked_delta) AS locked_delta
            FROM ledger GROUP BY address
        ),
        stakes AS (
            SELECT address, sum(amount) AS locked FROM bets WHERE status = 'confirmed'
            GROUP BY address
        ),
        everyone AS (
            SELECT address FROM accounts UNION SELECT address FROM sums
            UNION SELECT address FROM archived_totals UNION SELECT address FROM stakes
        )
        SELECT e.address, a.available, a.locked,
               coalesce(s.amount, 0) + coalesce(t.amount, 0),
               coalesce(s.locked_delta, 0) + coalesce(t.locked_delta, 0),
               coalesce(k.locked, 0)
        FROM everyone AS e
        LEFT JOIN accounts AS a ON a.address = e.address
        LEFT JOIN sums AS s ON s.address = e.address
        LEFT JOIN archived_totals AS t ON t.address = e.address
        LEFT JOIN stakes AS k ON k.address = e.address
        ORDER BY e.address
        """
    )
    for address, available, locked, sum_amount, sum_locked, stakes in rows:
        if available is None:
            if sum_amount or sum_locked:
                yield f"account {address}: ledger rows but no account row"
            if stakes:
                yield f"account {address}: confirmed bets but no account row"
            continue
        if available < 0 or locked < 0:
            yield f"account {address}: negative balance (available {available}, locked {locked})"
        if sum_amount != available:
            yield f"account {address}: Σ amount {sum_amount} != available {available}"
        if sum_locked != locked:
            yield f"account {address}: Σ locked_delta {sum_locked} != locked {locked}"
        if sum_amount + sum_locked != available + locked:
            yield (
                f"account {address}: Σ(amount + locked_delta) {sum_amount + sum_locked} "
                f"!= available + locked {available + locked}"
            )
        if stakes != locked:
            yield f"account {address}: locked {locked} != Σ stakes of confirmed bets {stakes}"


def _balance_chains(conn: sqlite3.Connection) -> Iterator[str]:
    """Each row's balance_after == the previous row's + its amount, never negative; the first
    kept row starts from what was archived."""
    rows = conn.execute(
        """
        SELECT l.address, l.entry_id, l.amount, l.balance_after, coalesce(t.amount, 0)
        FROM ledger AS l LEFT JOIN archived_totals AS t ON t.address = l.address
        ORDER BY l.address, l.entry_id
        """
    )
    current: str | None = None
    running = 0
    for address, entry_id, amount, balance_after, archived in rows:
        if address != current:
            current, running = address, archived
        running += amount
        if balance_after != running:
            yield (
                f"entry {entry_id} ({address}): balance_after {balance_after}, "
                f"but the rows before it sum to {running}"
            )
            running = balance_after  # report each break once, not every row after it
        if balance_after < 0:
            yield f"entry {entry_id} ({address}): negative balance_after {balance_after}"


def _judge_bet(
    bet_id: str,
    status: str,
    amount: int,
    multiplier: int,
    payout: int | None,
    found: list[ledger.Movement],
) -> Iterator[str]:
    try:
        expected = ledger.bet_movements(status, amount, multiplier)
    except ValueError as e:  # an unknown status
        yield f"bet {bet_id}: {e}"
        return
    except ledger.LedgerError as e:  # a stake that is not a positive amount
        yield f"bet {bet_id}: {e}"
        return
    if Counter(found) != Counter(expected):
        yield (
            f"bet {bet_id} ({status}): ledger rows {_describe(found)} "
            f"!= expected {_describe(expected)}"
        )
    if status in ("won", "lost", "void"):
        want = ledger.resolution_payout(status, amount, multiplier)
        if payout != want:
            yield f"bet {bet_id} ({status}): payout {payout} != {want}"
    elif payout is not None:
        yield f"bet {bet_id} ({status}): payout {payout} on an unresolved bet"


def _bets(conn: sqlite3.Connection) -> Iterator[str]:
    """One pass over bets joined to their rows (ref = bet_id), grouped by bet."""
    rows = conn.execute(
        """
        SELECT b.bet_id, b.address, b.status, b.amount, b.multiplier_bps, b.payout,
               l.kind, l.amount, l.locked_delta, l.address
        FROM bets AS b
        LEFT JOIN ledger AS l ON l.ref = b.bet_id AND l.kind IN ('stake', 'payout', 'refund')
        ORDER BY b.seq, l.entry_id
        """
    )
    current: tuple[str, str, int, int, int | None] | None = None
    found: list[ledger.Movement] = []
    for bet_id, address, status, amount, multiplier, payout, kind, *row in rows:
        if current is None or current[0] != bet_id:
            if current is not None:
                yield from _judge_bet(*current, found)
            current, found = (bet_id, status, amount, multiplier, payout), []
        if kind is not None:
            row_amount, row_locked, row_address = row
            found.append(ledger.Movement(kind, row_amount, row_locked))
            if row_address != address:
                yield f"bet {bet_id}: its {kind} row is on {row_address}, the bet is {address}'s"
    if current is not None:
        yield from _judge_bet(*current, found)


# Every column that holds units, as (table, key column, money column, NULL allowed).
_MONEY_COLUMNS = (
    ("accounts", "address", "available", False),
    ("accounts", "address", "locked", False),
    ("ledger", "entry_id", "amount", False),
    ("ledger", "entry_id", "locked_delta", False),
    ("ledger", "entry_id", "balance_after", False),
    ("bets", "bet_id", "amount", False),
    ("bets", "bet_id", "payout", True),
    ("archived_totals", "address", "amount", False),
    ("archived_totals", "address", "locked_delta", False),
)


def _integer_money(conn: sqlite3.Connection) -> Iterator[str]:
    """Money stored as anything but an integer (a REAL from an overflow, text, a blob)."""
    for table, key, column, nullable in _MONEY_COLUMNS:
        allowed = "('integer', 'null')" if nullable else "('integer')"
        rows = conn.execute(
            f"SELECT {key}, typeof({column}), {column} FROM {table} "
            f"WHERE typeof({column}) NOT IN {allowed} ORDER BY {key}"
        )
        for ident, kind, value in rows:
            yield f"{table} {ident}: {column} is {kind} {value!r}, not an integer"


def _orphans(conn: sqlite3.Connection) -> Iterator[str]:
    rows = conn.execute(
        """
        SELECT l.entry_id, l.kind, l.ref FROM ledger AS l
        WHERE l.kind IN ('stake', 'payout', 'refund')
          AND NOT EXISTS (SELECT 1 FROM bets AS b WHERE b.bet_id = l.ref)
        ORDER BY l.entry_id
        """
    )
    for entry_id, kind, ref in rows:
        yield f"entry {entry_id}: {kind} row for bet {ref}, which does not exist"


def _cell_liability(conn: sqlite3.Connection) -> Iterator[str]:
    """Each tracked cell's liability (schema 4) against its open bets' potential payouts."""
    rows = conn.execute(
        """
        SELECT c.cell_id, c.total,
               coalesce((SELECT sum(b.amount * b.multiplier_bps / 10000) FROM bets AS b
                         WHERE b.cell_id = c.cell_id AND b.status = 'confirmed'), 0)
        FROM cell_liability AS c ORDER BY c.cell_id
        """
    )
    for cell_id, total, open_payouts in rows:
        if total != open_payouts:
            yield f"cell {cell_id}: liability {total} but its open bets may pay {open_payouts}"


def _describe(movements: list[ledger.Movement] | tuple[ledger.Movement, ...]) -> str:
    return "[" + ", ".join(f"{m.kind}({m.amount:+}, {m.locked_delta:+})" for m in movements) + "]"


def integrity_check(conn: sqlite3.Connection) -> list[str]:
    """Every disagreement between balances, ledger rows and bets; [] when consistent.

    Reads in one transaction so the checks see one snapshot even while the writer commits.
    """
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        return [
            *_integer_money(conn),
            *_accounts(conn),
            *_balance_chains(conn),
            *_bets(conn),
            *_orphans(conn),
            *_cell_liability(conn),
        ]
    finally:
        if own:
            conn.execute("COMMIT")
