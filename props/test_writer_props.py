"""The writer property (issue 9): any batch mixing valid `WriterRequest`s with hostile ones —
integers far past 2⁶³, negative stakes, lone surrogates, empty or huge strings, wrong types,
replays, exact duplicates, unknown accounts, settlements that fail half-way, ticks that do not
bind — goes through the real SQLite write layer (`tap.store.write.apply_batch`) without raising:
every valid item commits, every hostile one is refused (or, for a settlement or a tick, leaves
no trace), each waiter gets its answer, and the ledger still reconciles (`integrity_check`,
which also checks each cell's liability against its open bets).
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from tap.messages import (
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    Deposit,
    EntryPosted,
    Outcome,
    PlaceBet,
    Settle,
    StoreTicks,
    Tick,
    WriterRequest,
)
from tap.store import connect, read, write
from tap.store.integrity import integrity_check

NOW = 1_732_290_000_000
FUNDED = ("0xa1", "0xa2", "0xa3")
OPEN_BETS = 4  # confirmed before each example, for settlements to resolve
STAKE = 1_000
CAPS = {"BTC-USD": 10**12}

# ── hostile values ────────────────────────────────────────────────────────────────────────────

huge_ints = st.one_of(
    st.integers(min_value=2**53),
    st.integers(max_value=-(2**53)),
    st.sampled_from([2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64, 10**400]),
)
weird_text = st.one_of(
    st.just(""),
    st.text(min_size=300, max_size=400),
    st.text(st.characters(categories=["Cs", "Cc", "Zl"]), min_size=1, max_size=8),
)
wrong_types: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.floats(allow_nan=True), st.booleans(), st.binary(max_size=8)
)
TEXT_FIELDS = ("bet_id", "address", "cell_id", "symbol", "nonce", "signature")
INT_FIELDS = tuple(f for f in PlaceBet.__struct_fields__ if f not in TEXT_FIELDS)


def bad_value(name: str) -> st.SearchStrategy[Any]:
    if name in TEXT_FIELDS:
        choices = [weird_text, wrong_types, huge_ints]
        if name == "nonce":
            choices.append(st.sampled_from(["short", "with spaces ok??", "pipe|in|it|xxxxxxx"]))
        return st.one_of(*choices)
    bad = [huge_ints, wrong_types, st.text(max_size=5)]
    if name in ("amount", "chain_id", "multiplier_bps", "min_multiplier_bps", "timestamp"):
        bad.append(st.integers(max_value=-1 if name != "chain_id" else 0, min_value=-(2**40)))
    return st.one_of(*bad)


# ── the batch, and what each item must get ────────────────────────────────────────────────────


def good_bet(n: int, address: str = "0xa1", *, bet_id: str | None = None) -> PlaceBet:
    return PlaceBet(
        bet_id=bet_id or f"v-{n}",
        address=address,
        cell_id=f"BTC-USD:200:{n}",
        symbol="BTC-USD",
        col=200,
        row=n,
        t_start=1_000_000,
        t_end=1_005_000,
        price_lo=n * 1000,
        price_hi=n * 1000 + 1000,
        amount=STAKE,
        multiplier_bps=25_000,
        nonce=f"valid-nonce-{n:08d}",
        accepted_at=NOW,
        timestamp=NOW,
        chain_id=31337,
        min_multiplier_bps=0,
        signature="cd" * 64,
    )


def outcome(bet_id: Any, status: str = "lost", at: Any = NOW) -> Outcome:
    return Outcome(
        bet_id=bet_id,
        address="0xa1",
        status=status,  # type: ignore[arg-type]
        amount=STAKE,
        payout=0,
        decided_by=None,
        reason="column_end" if status == "lost" else "feed_gap",
        at=at,
    )


@dataclass
class Expect:
    """The answers a batch owes, by key."""

    confirmed: set[str] = field(default_factory=set)  # bet_ids every answer must confirm
    rejected: set[Any] = field(default_factory=set)  # bet_ids every answer must reject
    posted: set[str] = field(default_factory=set)  # refs that must get an entry
    refused: set[Any] = field(default_factory=set)  # refs that must get none
    resolved: set[str] = field(default_factory=set)  # open bets a valid settlement resolves
    ticks_kept: set[tuple[int, int]] = field(default_factory=set)
    ticks_dropped: set[Any] = field(default_factory=set)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[WriterRequest], Expect]:
    items: list[WriterRequest] = []
    expect = Expect()
    fresh = iter(range(10_000))
    settled: set[int] = set()
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(
            st.sampled_from(
                [
                    "bet",
                    "hostile_bet",
                    "replay",
                    "duplicate",
                    "unknown_account",
                    "deposit",
                    "hostile_deposit",
                    "settle",
                    "hostile_settle",
                    "ticks",
                ]
            )
        )
        n = next(fresh)
        if kind == "bet":
            bet = good_bet(n, draw(st.sampled_from(FUNDED)))
            items.append(bet)
            expect.confirmed.add(bet.bet_id)
        elif kind == "hostile_bet":
            names = draw(
                st.sets(st.sampled_from(PlaceBet.__struct_fields__), min_size=1, max_size=3)
            )
            changes = {name: draw(bad_value(name)) for name in names}
            bet = replace(good_bet(n, bet_id=f"h-{n}"), **changes)
            items.append(bet)
            expect.rejected.add(bet.bet_id)
        elif kind in ("replay", "duplicate") and expect.confirmed:
            original = next(
                b for b in items if isinstance(b, PlaceBet) and b.bet_id in expect.confirmed
            )
            if kind == "duplicate":  # a redelivery: answered with what the first one got
                items.append(original)
            else:  # a new request reusing the nonce
                items.append(replace(original, bet_id=f"r-{n}", cell_id=f"BTC-USD:201:{n}"))
                expect.rejected.add(f"r-{n}")
        elif kind == "unknown_account":
            bet = good_bet(n, "0xdeadbeef")
            items.append(bet)
            expect.rejected.add(bet.bet_id)
        elif kind == "deposit":
            items.append(
                Deposit(address=draw(st.sampled_from(FUNDED)), amount=7, ref=f"d-{n}", at=NOW)
            )
            expect.posted.add(f"d-{n}")
        elif kind == "hostile_deposit":
            bad = draw(
                st.sampled_from(["amount", "ref", "address"]),
            )
            values: dict[str, Any] = {"address": "0xa2", "amount": 5, "ref": f"hd-{n}", "at": NOW}
            if bad == "amount":
                values["amount"] = draw(st.one_of(huge_ints, st.integers(max_value=0), wrong_types))
            elif bad == "ref":
                values["ref"] = f"hd-{n}-" + draw(
                    st.text(st.characters(categories=["Cs"]), min_size=1)
                )
            else:
                values["address"] = draw(st.one_of(st.none(), huge_ints))
            items.append(Deposit(**values))
            expect.refused.add(values["ref"])
        elif kind == "settle":
            i = draw(st.integers(0, OPEN_BETS - 1))
            if i not in settled:
                settled.add(i)
                items.append(
                    Settle(
                        outcomes=(outcome(f"open-{i}", draw(st.sampled_from(["lost", "void"]))),),
                    )
                )
                expect.resolved.add(f"open-{i}")
        elif kind == "hostile_settle":
            i = draw(st.integers(0, OPEN_BETS - 1))
            at = draw(st.one_of(huge_ints, wrong_types))
            bet_id = draw(st.one_of(st.just(f"open-{i}"), weird_text, wrong_types))
            garbage = draw(st.sampled_from([None, 5, (None,), ("x",)]))
            outcomes: Any = draw(st.sampled_from([(outcome(bet_id, "void", at),), garbage]))
            items.append(Settle(outcomes=outcomes))
        else:  # ticks, some of which cannot be stored
            ticks = []
            for k in range(draw(st.integers(1, 4))):
                if draw(st.booleans()):
                    ticks.append(Tick(symbol="BTC-USD", ts=NOW + n * 10 + k, price=k))
                    expect.ticks_kept.add((NOW + n * 10 + k, k))
                else:
                    ticks.append(Tick(symbol="BTC-USD", ts=draw(huge_ints), price=k))
            items.append(StoreTicks(ticks=tuple(ticks)))
    return items, expect


_TEMPLATE: list[Path] = []


def _template() -> Path:
    """The starting ledger, built once per run: three funded accounts and OPEN_BETS confirmed
    bets of 0xa1. Each example starts from a copy (cheaper than migrating and seeding anew)."""
    if not _TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="tap-writer-props-")) / "template.db"
        conn = connect.open_writer(path, synchronous="OFF")
        setup: list[WriterRequest] = [
            Deposit(address=a, amount=10**9, ref=f"seed-{a}", at=NOW) for a in FUNDED
        ]
        setup += [good_bet(9_000 + i, bet_id=f"open-{i}") for i in range(OPEN_BETS)]
        write.apply_batch(conn, setup, NOW)
        write.rebuild_cell_liability(conn)  # as a starting writer does
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        _TEMPLATE.append(path)
        atexit.register(shutil.rmtree, path.parent, ignore_errors=True)
    return _TEMPLATE[0]


@contextmanager
def ledger_db() -> Iterator[sqlite3.Connection]:
    where = Path(tempfile.mkdtemp(prefix="tap-writer-props-"))
    shutil.copyfile(_template(), where / "tap.db")
    conn = connect.open_writer(where / "tap.db", synchronous="OFF")
    try:
        yield conn
    finally:
        conn.close()
        shutil.rmtree(where, ignore_errors=True)


@given(batches())
def test_any_batch_commits_its_valid_items_and_refuses_the_rest(
    drawn: tuple[list[WriterRequest], Expect],
) -> None:
    batch, expect = drawn
    with ledger_db() as conn:
        # Never raises. The cell cap is on (so its bookkeeping is exercised) but far above
        # what the valid bets need: none of them may be refused for it.
        events: list[Committed] = write.apply_batch(conn, batch, NOW, cell_caps=CAPS)

        bets: dict[Any, list[Committed]] = defaultdict(list)
        entries: dict[Any, list[EntryPosted]] = defaultdict(list)
        for e in events:
            if isinstance(e, BetConfirmed | BetRejected):
                bets[e.bet.bet_id].append(e)
            elif isinstance(e, EntryPosted):
                entries[e.ref].append(e)
        for bet_id in expect.confirmed:
            assert bets[bet_id] and all(isinstance(a, BetConfirmed) for a in bets[bet_id])
            stored = read.get_bet(conn, bet_id)
            assert stored is not None and stored.status == "confirmed"
        for bet_id in expect.rejected:
            assert bets[bet_id], f"no answer for {bet_id!r}"
            assert all(isinstance(a, BetRejected) for a in bets[bet_id]), bets[bet_id]
        # Every bet in the batch got an answer, and nothing else was answered.
        placed = {b.bet_id for b in batch if isinstance(b, PlaceBet)}
        assert set(bets) == placed
        for ref in expect.posted:
            assert [e.entry is not None for e in entries[ref]] == [True]
        for ref in expect.refused:
            assert [e.entry for e in entries[ref]] == [None]
        resolved = [e.bet.bet_id for e in events if isinstance(e, BetResolved)]
        assert sorted(resolved) == sorted(expect.resolved)
        for i in range(OPEN_BETS):
            stored = read.get_bet(conn, f"open-{i}")
            assert stored is not None
            assert (stored.status != "confirmed") == (f"open-{i}" in expect.resolved)
        kept = {(t.ts, t.price) for t in read.ticks_range(conn, "BTC-USD").ticks}
        assert kept == expect.ticks_kept
        assert integrity_check(conn) == []

        # The writer carries on: the next batch is an ordinary one.
        after = write.apply_batch(conn, [good_bet(99_999, "0xa3")], NOW, cell_caps=CAPS)
        assert any(isinstance(e, BetConfirmed) for e in after)
