"""The integrity check: a consistent database passes; each kind of corruption is named."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tap.messages import DecidedBy, Deposit, Outcome, PlaceBet, Settle
from tap.store import connect, write
from tap.store.integrity import integrity_check
from tests.builders import placed_bet

NOW = 1_732_290_000_000


def bet(n: int, address: str, amount: int) -> PlaceBet:
    return placed_bet(n, address, amount)


def settle(bet_id: str, status: str) -> Outcome:
    return Outcome(
        bet_id=bet_id,
        address="",
        status=status,  # type: ignore[arg-type]
        amount=0,
        payout=0,
        decided_by=DecidedBy(ts=NOW, price=1) if status == "won" else None,
        reason="test",
        at=NOW,
    )


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Two accounts with a bet in every status: confirmed, won, lost, void, rejected."""
    c = connect.open_writer(tmp_path / "tap.db")
    write.apply_batch(
        c,
        [
            Deposit(address="0xaa", amount=10_000, ref="d1", at=NOW),
            Deposit(address="0xbb", amount=500, ref="d2", at=NOW),
            bet(1, "0xaa", 1_000),
            bet(2, "0xaa", 2_000),
            bet(3, "0xaa", 3_000),
            bet(4, "0xaa", 1_500),
            bet(5, "0xbb", 900),  # rejected: insufficient funds
            bet(6, "0xbb", 500),
        ],
        NOW,
    )
    write.apply_batch(
        c,
        [
            Settle(
                outcomes=(settle("bet-2", "won"), settle("bet-3", "lost"), settle("bet-4", "void"))
            )
        ],
        NOW + 1,
    )
    yield c
    c.close()


def test_a_consistent_database_passes(conn: sqlite3.Connection) -> None:
    statuses = {r[0] for r in conn.execute("SELECT status FROM bets")}
    assert statuses == {"confirmed", "won", "lost", "void", "rejected"}
    assert integrity_check(conn) == []


def only(problems: list[str], *fragments: str) -> None:
    assert problems, "corruption went unnoticed"
    for fragment in fragments:
        assert any(fragment in p for p in problems), (fragment, problems)


def test_a_changed_ledger_amount_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE ledger SET amount = amount - 1 WHERE ref = 'bet-1'")
    only(
        integrity_check(conn),
        "account 0xaa: Σ amount",
        "bet bet-1 (confirmed): ledger rows",
        "balance_after",
    )


def test_a_changed_balance_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE accounts SET available = available + 1 WHERE address = '0xbb'")
    only(integrity_check(conn), "account 0xbb: Σ amount 0 != available 1")


def test_a_negative_balance_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute("UPDATE accounts SET available = -1 WHERE address = '0xbb'")
    only(integrity_check(conn), "account 0xbb: negative balance")


def test_locked_money_without_a_confirmed_bet_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE bets SET status = 'rejected' WHERE bet_id = 'bet-1'")
    only(
        integrity_check(conn),
        "account 0xaa: locked 1000 != Σ stakes of confirmed bets 0",
        "bet bet-1 (rejected): ledger rows [stake(-1000, +1000)] != expected []",
    )


def test_a_missing_resolution_row_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM ledger WHERE ref = 'bet-3' AND kind = 'payout'")
    only(integrity_check(conn), "bet bet-3 (lost)", "Σ locked_delta")


def test_a_wrong_payout_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE bets SET payout = payout + 1 WHERE bet_id = 'bet-2'")
    only(integrity_check(conn), "bet bet-2 (won): payout 6001 != 6000")


def test_a_win_paid_at_the_wrong_multiplier_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE bets SET multiplier_bps = 20000 WHERE bet_id = 'bet-2'")
    only(integrity_check(conn), "bet bet-2 (won): ledger rows", "payout 6000 != 4000")


def test_a_row_for_a_bet_that_does_not_exist_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO ledger (address, kind, amount, locked_delta, balance_after, ref, at) "
        "VALUES ('0xaa', 'refund', 0, 0, 10000, 'ghost', 1)"
    )
    only(integrity_check(conn), "entry 11: refund row for bet ghost, which does not exist")


def test_a_bet_row_on_another_address_is_caught(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE bets SET address = '0xbb' WHERE bet_id = 'bet-1'")
    only(integrity_check(conn), "bet bet-1: its stake row is on 0xaa, the bet is 0xbb's")


def test_archived_rows_still_reconcile_through_archived_totals(conn: sqlite3.Connection) -> None:
    # What the archiver does: move 0xaa's oldest rows out, keep their sums.
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO archived_totals (address, amount, locked_delta, entries) "
        "SELECT address, sum(amount), sum(locked_delta), count(*) FROM ledger "
        "WHERE address = '0xaa' AND kind = 'deposit' GROUP BY address"
    )
    conn.execute("DELETE FROM ledger WHERE address = '0xaa' AND kind = 'deposit'")
    conn.execute("COMMIT")
    assert integrity_check(conn) == []
    conn.execute("UPDATE archived_totals SET amount = amount + 7")
    only(integrity_check(conn), "account 0xaa: Σ amount")


def test_money_stored_as_a_real_is_caught(conn: sqlite3.Connection) -> None:
    # What SQLite does with an integer sum that overflows: it stores a REAL, no error raised.
    conn.execute(
        "UPDATE accounts SET available = available + 9223372036854775807 WHERE address = '0xaa'"
    )
    kind = conn.execute("SELECT typeof(available) FROM accounts WHERE address = '0xaa'").fetchone()
    assert kind[0] == "real"
    only(integrity_check(conn), "accounts 0xaa: available is real")
