"""The ledger database: migrations, constraints, the writer's per-item outcomes, and the reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tap import ledger
from tap.messages import (
    AdminCredit,
    Balance,
    BalanceChanged,
    BetConfirmed,
    BetRejected,
    BetResolved,
    DecidedBy,
    Deposit,
    EntryPosted,
    Outcome,
    PlaceBet,
    Settle,
    StoreTicks,
    Tick,
    Withdrawal,
)
from tap.store import connect, read, write
from tap.store.integrity import integrity_check
from tap.store.schema import LATEST, SchemaTooNew, migrate, schema_version

NOW = 1_732_290_000_000


def bet(
    n: int,
    *,
    address: str = "0xaa",
    amount: int = 1_000,
    col: int = 100,
    row: int = 7,
    nonce: str | None = None,
    bet_id: str | None = None,
    multiplier_bps: int = 25_000,
) -> PlaceBet:
    return PlaceBet(
        bet_id=bet_id or f"bet-{n}",
        address=address,
        cell_id=f"BTC-USD:{col}:{row}",
        symbol="BTC-USD",
        col=col,
        row=row,
        t_start=col * 5000,
        t_end=col * 5000 + 5000,
        price_lo=row * 1000,
        price_hi=row * 1000 + 1000,
        amount=amount,
        multiplier_bps=multiplier_bps,
        nonce=nonce or f"nonce-{n:012d}",
        accepted_at=NOW,
        timestamp=NOW,
        chain_id=31337,
        min_multiplier_bps=0,
        signature="ab" * 64,
    )


def outcome(bet_id: str, status: str, *, at: int = NOW + 10_000) -> Outcome:
    return Outcome(
        bet_id=bet_id,
        address="ignored",
        status=status,  # type: ignore[arg-type]
        amount=0,
        payout=0,
        decided_by=DecidedBy(ts=at - 1, price=7_500) if status == "won" else None,
        reason={"won": "touch", "lost": "column_end", "void": "feed_gap"}[status],
        at=at,
    )


def deposit(address: str, amount: int, ref: str) -> Deposit:
    return Deposit(address=address, amount=amount, ref=ref, at=NOW)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = connect.open_writer(tmp_path / "tap.db")
    yield c  # type: ignore[misc]
    c.close()


def commit(conn: sqlite3.Connection, *requests: object) -> list[object]:
    return list(write.apply_batch(conn, requests, NOW))  # type: ignore[arg-type]


# ── migrations and connections ───────────────────────────────────────────────────────────────


def test_migrate_is_idempotent_and_records_the_version(tmp_path: Path) -> None:
    path = tmp_path / "tap.db"
    first = connect.open_writer(path)
    tables = first.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert schema_version(first) == LATEST
    assert migrate(first) == LATEST
    second = connect.open_writer(path)  # a second process starting on the same file
    assert second.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == tables
    assert second.execute("SELECT count(*) FROM schema_version").fetchone()[0] == LATEST


def test_migrate_path_creates_a_current_database(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tap.db"
    assert connect.migrate_path(path) == LATEST
    assert connect.migrate_path(path) == LATEST


def test_a_database_from_newer_code_is_refused(tmp_path: Path) -> None:
    conn = connect.open_writer(tmp_path / "tap.db")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))
    with pytest.raises(SchemaTooNew):
        migrate(conn)
    assert not conn.in_transaction


def test_connections_are_wal_full_sync_with_foreign_keys(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_read_only_connection_cannot_write(tmp_path: Path) -> None:
    connect.open_writer(tmp_path / "tap.db").close()
    reader = connect.open_connection(tmp_path / "tap.db", read_only=True)
    with pytest.raises(sqlite3.OperationalError):
        reader.execute("INSERT INTO accounts (address) VALUES ('0x1')")


# ── constraints ──────────────────────────────────────────────────────────────────────────────


def test_accounts_refuse_negative_balances(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO accounts (address, available, locked) VALUES ('0x1', -1, 0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO accounts (address, available, locked) VALUES ('0x1', 0, -1)")


def test_a_rejected_bet_does_not_occupy_its_cell_but_burns_its_nonce(
    conn: sqlite3.Connection,
) -> None:
    # No money: the first bet is stored as rejected (insufficient_funds)...
    [rejected, *_] = commit(conn, bet(1), deposit("0xaa", 5_000, "d1"))
    assert isinstance(rejected, BetRejected) and rejected.reason == "insufficient_funds"
    # ...and a later bet by the same address on the same cell is confirmed: the partial index
    # only counts non-rejected bets.
    [confirmed] = commit(conn, bet(2))  # the bet event carries the balance: no BalanceChanged
    assert isinstance(confirmed, BetConfirmed)
    # The rejected bet's nonce stays burned.
    [replay] = commit(conn, bet(3, nonce="nonce-000000000001"))
    assert isinstance(replay, BetRejected) and replay.reason == "replayed_nonce"
    stored = read.get_bet_by_nonce(conn, "0xaa", "nonce-000000000001")
    assert stored is not None and stored.status == "rejected" and stored.bet_id == "bet-1"


def test_a_second_live_bet_on_the_same_cell_is_rejected_and_stored(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"))
    [first, second] = commit(conn, bet(1), bet(2))
    assert isinstance(first, BetConfirmed)
    assert isinstance(second, BetRejected) and second.reason == "duplicate_cell_bet"
    stored = read.get_bet(conn, "bet-2")
    assert stored is not None and stored.status == "rejected"
    assert stored.reason == "duplicate_cell_bet"
    assert read.get_balance(conn, "0xaa") == ledger.Account(9_000, 1_000)


def test_another_address_may_bet_on_the_same_cell_with_the_same_nonce(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"), deposit("0xbb", 10_000, "d2"))
    events = commit(conn, bet(1), bet(2, address="0xbb", nonce="nonce-000000000001"))
    assert [type(e) for e in events[:2]] == [BetConfirmed, BetConfirmed]


# ── the writer's outcomes ────────────────────────────────────────────────────────────────────


def test_a_confirmed_bet_moves_its_stake_and_writes_one_stake_row(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"))
    events = commit(conn, bet(1, amount=3_000))
    assert isinstance(events[0], BetConfirmed)
    assert events[0].bet.confirmed_at == NOW and events[0].bet.status == "confirmed"
    assert events[0].balance == Balance(available=7_000, locked=3_000)
    assert len(events) == 1  # one event per bet: its balance travels inside it
    rows = read.ledger_page(conn, "0xaa").items
    assert [(r.kind, r.amount, r.locked_delta, r.balance_after, r.ref) for r in rows] == [
        ("stake", -3_000, 3_000, 7_000, "bet-1"),
        ("deposit", 10_000, 0, 10_000, "d1"),
    ]


def test_only_as_many_bets_as_the_balance_covers_are_confirmed_in_one_batch(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 2_500, "d1"))
    events = commit(conn, *(bet(n, row=n) for n in range(5)))
    outcomes = [type(e).__name__ for e in events if isinstance(e, BetConfirmed | BetRejected)]
    assert outcomes == ["BetConfirmed", "BetConfirmed", "BetRejected", "BetRejected", "BetRejected"]
    assert read.get_balance(conn, "0xaa") == ledger.Account(500, 2_000)
    assert integrity_check(conn) == []


def test_a_bet_from_an_address_without_an_account_is_rejected(conn: sqlite3.Connection) -> None:
    [rejected] = commit(conn, bet(1, address="0xnew"))
    assert isinstance(rejected, BetRejected) and rejected.reason == "insufficient_funds"
    assert read.get_balance(conn, "0xnew") == ledger.Account(0, 0)


def test_redelivered_bet_answers_its_original_outcome_without_moving_money(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"))
    commit(conn, bet(1))
    [again] = commit(conn, bet(1))
    assert isinstance(again, BetConfirmed) and again.bet.bet_id == "bet-1"
    assert read.get_balance(conn, "0xaa") == ledger.Account(9_000, 1_000)


@pytest.mark.parametrize(
    ("status", "payout", "kind", "available"),
    [
        ("won", 2_500, "payout", 9_000 + 2_500),  # 1000 × 2.5×
        ("lost", 0, "payout", 9_000),  # a payout row of 0 releases the lock
        ("void", 1_000, "refund", 10_000),
    ],
)
def test_settlement_writes_one_resolution_row(
    conn: sqlite3.Connection, status: str, payout: int, kind: str, available: int
) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"), bet(1))
    [resolved] = commit(conn, Settle(outcomes=(outcome("bet-1", status),)))
    assert isinstance(resolved, BetResolved)
    balance = resolved.balance
    assert isinstance(resolved, BetResolved)
    assert resolved.bet.status == status and resolved.bet.payout == payout
    assert balance == Balance(available=available, locked=0)
    newest = read.ledger_page(conn, "0xaa", limit=1).items[0]
    assert (newest.kind, newest.amount, newest.locked_delta) == (kind, payout, -1_000)
    assert resolved.entry_id == newest.entry_id  # what the hot state's credit carries
    stored = read.get_bet(conn, "bet-1")
    assert stored == resolved.bet
    assert integrity_check(conn) == []


def test_settlement_is_idempotent(conn: sqlite3.Connection) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"), bet(1))
    commit(conn, Settle(outcomes=(outcome("bet-1", "won"),)))
    # The same settlement again, and a contradicting one: both are no-ops.
    assert commit(conn, Settle(outcomes=(outcome("bet-1", "won"), outcome("bet-1", "void")))) == []
    assert read.get_balance(conn, "0xaa") == ledger.Account(11_500, 0)
    assert len(read.ledger_page(conn, "0xaa").items) == 3


def test_settling_a_rejected_or_unknown_bet_does_nothing(conn: sqlite3.Connection) -> None:
    commit(conn, bet(1))  # rejected: no funds
    assert commit(conn, Settle(outcomes=(outcome("bet-1", "won"), outcome("nope", "won")))) == []
    assert read.get_balance(conn, "0xaa") == ledger.Account(0, 0)


def test_settlement_pays_the_stored_quote_not_the_resolvers_numbers(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"), bet(1, amount=999, multiplier_bps=29_600))
    lying = Outcome(
        bet_id="bet-1",
        address="0xbb",
        status="won",
        amount=1,
        payout=10**9,
        decided_by=DecidedBy(ts=1, price=2),
        reason="touch",
        at=NOW,
    )
    [resolved] = commit(conn, Settle(outcomes=(lying,)))
    assert isinstance(resolved, BetResolved)
    assert resolved.bet.payout == 999 * 29_600 // 10_000 == 2_957
    assert read.get_balance(conn, "0xbb") == ledger.Account(0, 0)


def test_deposits_are_idempotent_by_ref(conn: sqlite3.Connection) -> None:
    [first, _] = commit(conn, deposit("0xaa", 700, "d1"))
    [again] = commit(conn, deposit("0xaa", 700, "d1"))
    assert isinstance(first, EntryPosted) and first.entry is not None
    assert again == first
    assert read.get_balance(conn, "0xaa") == ledger.Account(700, 0)


def test_withdrawal_is_refused_beyond_available_and_burns_its_nonce(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 1_000, "d1"), bet(1, amount=600))
    w = Withdrawal(address="0xaa", amount=500, nonce="w-nonce-0000001", ref="w1", at=NOW)
    [refused] = commit(conn, w)
    assert refused == EntryPosted(ref="w1", entry=None, error="insufficient_funds")
    [again] = commit(conn, w)  # the same request again: the same answer
    assert again == refused
    replay = Withdrawal(address="0xaa", amount=100, nonce="w-nonce-0000001", ref="w2", at=NOW)
    [replayed] = commit(conn, replay)
    assert replayed == EntryPosted(ref="w2", entry=None, error="replayed_nonce")
    ok = Withdrawal(address="0xaa", amount=400, nonce="w-nonce-0000002", ref="w3", at=NOW)
    [done, _] = commit(conn, ok)
    assert isinstance(done, EntryPosted) and done.entry is not None
    assert (done.entry.kind, done.entry.amount, done.entry.balance_after) == ("withdrawal", -400, 0)
    assert commit(conn, ok) == [done]
    assert read.get_balance(conn, "0xaa") == ledger.Account(0, 600)


def test_a_negative_adjustment_may_not_take_available_below_zero(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", 1_000, "d1"))
    debit = AdminCredit(address="0xaa", amount=-1_001, reason="chargeback", ref="a1", at=NOW)
    [refused] = commit(conn, debit)
    assert refused == EntryPosted(ref="a1", entry=None, error="insufficient_funds")
    fine = AdminCredit(address="0xaa", amount=-1_000, reason="chargeback", ref="a2", at=NOW)
    [done, _] = commit(conn, fine)
    assert isinstance(done, EntryPosted) and done.entry is not None
    assert done.entry.kind == "adjustment" and done.entry.amount == -1_000
    assert commit(conn, fine) == [done]
    reason = conn.execute("SELECT reason FROM adjustments WHERE ref = 'a2'").fetchone()[0]
    assert reason == "chargeback"


@pytest.mark.parametrize("amount", [0, -5])
def test_non_positive_amounts_are_refused_without_touching_the_database(
    conn: sqlite3.Connection, amount: int
) -> None:
    commit(conn, deposit("0xaa", 1_000, "d1"))
    events = commit(
        conn,
        bet(1, amount=amount),
        deposit("0xaa", amount, "d2"),
        Withdrawal(address="0xaa", amount=amount, nonce="w-nonce-0000001", ref="w1", at=NOW),
    )
    assert isinstance(events[0], BetRejected) and events[0].reason == "amount_out_of_range"
    assert [e.error for e in events[1:]] == ["amount_out_of_range"] * 2  # type: ignore[attr-defined]
    assert read.get_bet(conn, "bet-1") is None
    assert read.get_balance(conn, "0xaa") == ledger.Account(1_000, 0)


def test_a_failing_batch_rolls_back_every_item(conn: sqlite3.Connection) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"), bet(1))
    # Corrupt `locked` so the settlement cannot release the stake: the whole batch must vanish.
    conn.execute("UPDATE accounts SET locked = 0 WHERE address = '0xaa'")
    with pytest.raises(ledger.LedgerError):
        commit(conn, deposit("0xaa", 5, "d2"), Settle(outcomes=(outcome("bet-1", "won"),)))
    assert not conn.in_transaction
    assert read.get_balance(conn, "0xaa") == ledger.Account(9_000, 0)
    assert len(read.ledger_page(conn, "0xaa").items) == 2


def test_ticks_are_insert_or_ignore_and_keep_two_prices_in_one_millisecond(
    conn: sqlite3.Connection,
) -> None:
    ticks = (Tick(symbol="BTC-USD", ts=5, price=10), Tick(symbol="BTC-USD", ts=5, price=11))
    assert commit(conn, StoreTicks(ticks=ticks), StoreTicks(ticks=ticks)) == []
    assert read.ticks_range(conn, "BTC-USD").ticks == list(ticks)


def test_busy_is_told_apart_from_other_errors(tmp_path: Path) -> None:
    path = tmp_path / "tap.db"
    holder = connect.open_writer(path)
    holder.execute("BEGIN IMMEDIATE")
    other = connect.open_connection(path, busy_timeout_ms=1)
    with pytest.raises(sqlite3.OperationalError) as busy:
        write.apply_batch(other, [deposit("0xaa", 1, "d1")], NOW)
    assert connect.is_busy(busy.value)
    assert not connect.is_busy(sqlite3.OperationalError("no such table: x"))
    assert not connect.is_busy(ValueError("database is locked"))
    holder.execute("ROLLBACK")


# ── reads ────────────────────────────────────────────────────────────────────────────────────


def test_list_bets_pages_newest_first_with_a_status_filter(conn: sqlite3.Connection) -> None:
    commit(conn, deposit("0xaa", 5_000, "d1"))
    commit(conn, *(bet(n, row=n) for n in range(8)))  # 5 confirmed, 3 rejected
    commit(conn, Settle(outcomes=(outcome("bet-0", "lost"),)))
    seen: list[str] = []
    cursor = None
    while True:
        page = read.list_bets(conn, "0xaa", limit=3, cursor=cursor)
        seen += [b.bet_id for b in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"bet-{n}" for n in reversed(range(8))]
    confirmed = read.list_bets(conn, "0xaa", status="confirmed", limit=10)
    assert [b.bet_id for b in confirmed.items] == ["bet-4", "bet-3", "bet-2", "bet-1"]
    assert confirmed.next_cursor is None
    rejected = read.list_bets(conn, "0xaa", status="rejected", limit=2)
    assert [b.bet_id for b in rejected.items] == ["bet-7", "bet-6"]
    rest = read.list_bets(conn, "0xaa", status="rejected", limit=2, cursor=rejected.next_cursor)
    assert [b.bet_id for b in rest.items] == ["bet-5"] and rest.next_cursor is None
    assert read.list_bets(conn, "0xbb").items == []


@pytest.mark.parametrize("cursor", ["", "zzzz", "!!", "Yw", "YzEyYQ"])
def test_a_foreign_cursor_is_refused(conn: sqlite3.Connection, cursor: str) -> None:
    with pytest.raises(read.InvalidCursor):
        read.list_bets(conn, "0xaa", cursor=cursor)


def test_ledger_pages_newest_first(conn: sqlite3.Connection) -> None:
    commit(conn, *(deposit("0xaa", n + 1, f"d{n}") for n in range(5)), deposit("0xbb", 9, "x"))
    first = read.ledger_page(conn, "0xaa", limit=2)
    second = read.ledger_page(conn, "0xaa", limit=2, cursor=first.next_cursor)
    third = read.ledger_page(conn, "0xaa", limit=2, cursor=second.next_cursor)
    refs = [e.ref for p in (first, second, third) for e in p.items]
    assert refs == ["d4", "d3", "d2", "d1", "d0"] and third.next_cursor is None
    assert [e.balance_after for e in first.items] == [15, 10]


def test_ticks_range_pages_without_splitting_a_millisecond(conn: sqlite3.Connection) -> None:
    stored = [(1, 5), (2, 5), (3, 5), (3, 6), (4, 5), (9, 1)]
    commit(conn, StoreTicks(ticks=tuple(Tick(symbol="S", ts=t, price=p) for t, p in stored)))
    commit(conn, StoreTicks(ticks=(Tick(symbol="T", ts=3, price=1),)))
    got: list[tuple[int, int]] = []
    start: int | None = 0
    while start is not None:
        page = read.ticks_range(conn, "S", start, 9, limit=3)
        got += [(t.ts, t.price) for t in page.ticks]
        start = page.next_from
    assert got == stored[:-1]  # to_ts is exclusive
    one_ms = read.ticks_range(conn, "S", 3, None, limit=1)  # a page that is all one millisecond
    assert [(t.ts, t.price) for t in one_ms.ticks] == [(3, 5), (3, 6)] and one_ms.next_from == 4
    assert read.last_ticks(conn) == {
        "S": Tick(symbol="S", ts=9, price=1),
        "T": Tick(symbol="T", ts=3, price=1),
    }


def test_resolver_reload_reads_ticks_since_a_time_and_the_last_one_before(
    conn: sqlite3.Connection,
) -> None:
    stored = [("S", 1, 5), ("S", 4, 5), ("S", 4, 6), ("S", 9, 1), ("T", 2, 1), ("T", 7, 2)]
    commit(conn, StoreTicks(ticks=tuple(Tick(symbol=s, ts=t, price=p) for s, t, p in stored)))
    since = read.ticks_since(conn, 4)
    assert [(t.symbol, t.ts, t.price) for t in since] == [
        ("S", 4, 5),
        ("S", 4, 6),
        ("S", 9, 1),
        ("T", 7, 2),
    ]
    assert read.last_tick_before(conn, 4) == {"S": 1, "T": 2}
    assert read.last_tick_before(conn, 2) == {"S": 1}
    assert read.ticks_since(conn, 10) == []


def test_open_bets_and_balances_rebuild_hot_state(conn: sqlite3.Connection) -> None:
    commit(conn, deposit("0xaa", 5_000, "d1"), deposit("0xbb", 700, "d2"))
    commit(conn, bet(1, col=101), bet(2, col=100), bet(3, address="0xbb", row=1))
    commit(conn, Settle(outcomes=(outcome("bet-1", "void"),)))
    assert [b.bet_id for b in read.open_bets(conn)] == ["bet-2"]  # bet-3: insufficient funds
    assert read.open_bets(conn, symbol="ETH-USD") == []
    assert read.open_bets(conn)[0] == bet(2, col=100)
    assert read.all_balances(conn) == {"0xaa": 4_000, "0xbb": 700}


def test_balances_are_read_with_the_ledger_position_they_include(
    conn: sqlite3.Connection,
) -> None:
    assert read.available_through(conn, "0xaa") == (0, 0)  # no account: nothing, at no position
    commit(conn, deposit("0xaa", 5_000, "d1"), deposit("0xbb", 700, "d2"))
    commit(conn, bet(1), deposit("0xbb", 5, "d3"))
    [stake] = read.ledger_page(conn, "0xaa", limit=1).items
    [d3] = read.ledger_page(conn, "0xbb", limit=1).items
    assert (stake.kind, d3.ref) == ("stake", "d3")
    assert read.available_through(conn, "0xaa") == (4_000, stake.entry_id)
    assert read.available_through(conn, "0xbb") == (705, d3.entry_id)
    assert read.all_available_through(conn) == {
        "0xaa": (4_000, stake.entry_id),
        "0xbb": (705, d3.entry_id),
    }


# ── the balance ceiling (money never becomes a REAL) ──────────────────────────────────────────

TOP = write.MAX_BALANCE  # 2**53 - 1


def test_a_deposit_or_credit_past_the_ceiling_is_refused_and_the_writer_goes_on(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", TOP - 100, "d1"))
    events = commit(
        conn,
        deposit("0xaa", 101, "d2"),
        AdminCredit(address="0xaa", amount=101, reason="goodwill", ref="a1", at=NOW),
        deposit("0xbb", 2**63, "d3"),  # not even bindable as an SQLite integer
        deposit("0xaa", 100, "d4"),  # exactly to the ceiling: fine
    )
    assert events[:3] == [
        EntryPosted(ref="d2", entry=None, error="amount_out_of_range"),
        EntryPosted(ref="a1", entry=None, error="amount_out_of_range"),
        EntryPosted(ref="d3", entry=None, error="amount_out_of_range"),
    ]
    assert isinstance(events[3], EntryPosted) and events[3].entry is not None
    assert events[3].entry.balance_after == TOP
    assert read.get_balance(conn, "0xaa") == ledger.Account(TOP, 0)
    assert read.get_balance(conn, "0xbb") == ledger.Account(0, 0)
    [refused] = commit(conn, deposit("0xaa", 1, "d5"))
    assert refused == EntryPosted(ref="d5", entry=None, error="amount_out_of_range")
    # A refused ref is not burned: nothing was stored, so the same ref may come again later.
    assert conn.execute("SELECT count(*) FROM adjustments").fetchone()[0] == 0
    [debited, _] = commit(conn, Withdrawal(address="0xaa", amount=5, nonce="w-1", ref="w1", at=NOW))
    assert isinstance(debited, EntryPosted) and debited.entry is not None  # writer alive
    money = conn.execute("SELECT typeof(available), typeof(locked) FROM accounts").fetchall()
    assert set(money) == {("integer", "integer")}
    assert integrity_check(conn) == []


def test_a_balance_far_past_the_ceiling_never_becomes_a_real(conn: sqlite3.Connection) -> None:
    # Without the ceiling, SQLite turns a sum above 2**63 - 1 into a REAL without a word.
    commit(conn, deposit("0xaa", TOP, "d1"))
    [refused] = commit(conn, deposit("0xaa", TOP, "d2"))
    assert refused == EntryPosted(ref="d2", entry=None, error="amount_out_of_range")
    row = conn.execute("SELECT typeof(available), available FROM accounts").fetchone()
    assert tuple(row) == ("integer", TOP)
    assert integrity_check(conn) == []


def test_a_stake_that_would_lock_past_the_ceiling_is_rejected_and_stored(
    conn: sqlite3.Connection,
) -> None:
    commit(conn, deposit("0xaa", TOP, "d1"), bet(1, amount=TOP))
    commit(conn, deposit("0xaa", 10, "d2"))
    [rejected] = commit(conn, bet(2, amount=10, row=8))
    assert isinstance(rejected, BetRejected) and rejected.reason == "amount_out_of_range"
    stored = read.get_bet(conn, "bet-2")
    assert stored is not None and (stored.status, stored.reason) == (
        "rejected",
        "amount_out_of_range",
    )
    assert read.get_balance(conn, "0xaa") == ledger.Account(10, TOP)
    assert integrity_check(conn) == []


@pytest.mark.parametrize("status", ["won", "void"])
def test_a_settlement_past_the_ceiling_leaves_the_bet_open_and_logs(
    conn: sqlite3.Connection, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    commit(conn, deposit("0xaa", TOP - 1_000, "d1"), bet(1, amount=1_000))  # 2.5×: pays 2_500
    commit(conn, deposit("0xaa", 1_100, "d2"))  # available TOP - 900: no room for 1_000 or 2_500
    events = commit(
        conn,
        Settle(outcomes=(outcome("bet-1", status),)),
        deposit("0xaa", 400, "d3"),  # the rest of the batch still commits
    )
    assert [type(e).__name__ for e in events] == ["EntryPosted", "BalanceChanged"]
    stored = read.get_bet(conn, "bet-1")
    assert stored is not None and stored.status == "confirmed" and stored.payout is None
    assert read.get_balance(conn, "0xaa") == ledger.Account(TOP - 500, 1_000)
    assert "bet-1" in caplog.text and "above" in caplog.text
    assert integrity_check(conn) == []
    # A loss credits nothing: that resolution still applies.
    [resolved] = commit(conn, Settle(outcomes=(outcome("bet-1", "lost"),)))
    assert isinstance(resolved, BetResolved) and resolved.bet.status == "lost"
    assert read.get_balance(conn, "0xaa") == ledger.Account(TOP - 500, 0)
    assert integrity_check(conn) == []


def test_many_processes_opening_a_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Two tap processes may start on one new database together: switching it to WAL and
    migrating meet each other's locks, and must wait them out rather than fail."""
    import threading

    path = tmp_path / "fresh.db"
    errors: list[str] = []

    def open_it() -> None:
        try:
            connect.open_writer(path, busy_timeout_ms=1).close()
        except Exception as e:  # collected, asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = connect.open_connection(path, read_only=True)
    try:
        from tap.store.schema import LATEST, schema_version

        assert schema_version(conn) == LATEST
    finally:
        conn.close()


def test_each_bet_event_carries_the_balance_right_after_it(conn: sqlite3.Connection) -> None:
    commit(conn, deposit("0xaa", 10_000, "d1"))
    first, second, short, entry, final = commit(
        conn,
        bet(1, amount=3_000),
        bet(2, amount=3_000, row=2),
        bet(3, amount=9_000, row=3),  # more than is left: refused, balance unchanged
        deposit("0xaa", 500, "d2"),
    )
    assert isinstance(first, BetConfirmed) and isinstance(second, BetConfirmed)
    assert first.balance == Balance(available=7_000, locked=3_000)
    assert second.balance == Balance(available=4_000, locked=6_000)
    assert isinstance(short, BetRejected) and short.reason == "insufficient_funds"
    assert short.balance == Balance(available=4_000, locked=6_000)
    assert isinstance(entry, EntryPosted)
    # a deposit's change has no bet frame to travel in: one BalanceChanged, the batch's last
    assert final == BalanceChanged(address="0xaa", available=4_500, locked=6_000, at=NOW)


def test_a_refused_bet_of_an_unknown_account_carries_no_balance(conn: sqlite3.Connection) -> None:
    [rejected] = commit(conn, bet(1, address="0xnew"))
    assert isinstance(rejected, BetRejected) and rejected.balance is None
