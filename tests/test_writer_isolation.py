"""The writer never dies on one item (issue 9, defect 1).

A signed bet with `min_multiplier_bps = -9223372036854775809` once reached the writer, whose
INSERT raised `OverflowError`: the batch rolled back, the writer and the process died, and the
other bets of that batch — already answered 202 — were lost. Now one bad item is refused with
a reason and the rest of its batch commits; only a broken database stops the writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import trio

from actors import batcher
from actors.fanout import CommittedFanout
from tap import ledger
from tap.config import BatcherConfig
from tap.messages import (
    Balance,
    BalanceChanged,
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    DecidedBy,
    Deposit,
    EntryPosted,
    Outcome,
    PlaceBet,
    Settle,
    StoreTicks,
    Tick,
    WriterRequest,
)
from tap.runtime.clock import Clock
from tap.store import connect, read, write
from tap.store.integrity import integrity_check
from tests.builders import NOW, placed_bet
from tests.e2e import Server, pick_cell, placeable_cells, serving

OVERFLOW = -9_223_372_036_854_775_809  # the reproduction's value: below -2⁶³


def hostile(n: int, **fields: object) -> PlaceBet:
    """Bet `n` with fields the edge's bounds would never let through (built past them)."""
    return msgspec.structs.replace(placed_bet(n), **fields)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = connect.open_writer(tmp_path / "tap.db", synchronous="OFF")
    yield c  # type: ignore[misc]
    c.close()


def answers(events: Sequence[Committed]) -> dict[str, Committed]:
    return {e.bet.bet_id: e for e in events if isinstance(e, BetConfirmed | BetRejected)}


def test_nine_good_bets_commit_beside_the_overflowing_one(conn: sqlite3.Connection) -> None:
    write.apply_batch(conn, [Deposit(address="0xaa", amount=100_000, ref="d", at=NOW)], NOW)
    batch: list[WriterRequest] = [placed_bet(n) for n in range(9)]
    batch.insert(4, hostile(99, min_multiplier_bps=OVERFLOW))
    by_id = answers(write.apply_batch(conn, batch, NOW))
    assert len(by_id) == 10
    assert all(isinstance(by_id[f"bet-{n}"], BetConfirmed) for n in range(9))
    refused = by_id["bet-99"]
    assert isinstance(refused, BetRejected) and refused.reason == "invalid_request"
    assert read.get_bet(conn, "bet-99") is None  # its values cannot even be stored
    assert read.get_balance(conn, "0xaa") == ledger.Account(100_000 - 9_000, 9_000)
    assert integrity_check(conn) == []
    # The next batch works as ever.
    (next_answer,) = answers(write.apply_batch(conn, [placed_bet(10)], NOW)).values()
    assert isinstance(next_answer, BetConfirmed)


@pytest.mark.parametrize(
    "bad",
    [
        {"min_multiplier_bps": 2**63},
        {"amount": 2**80},
        {"timestamp": -(2**70)},
        {"col": 2**64},
        {"nonce": "x"},
        {"nonce": "n" * 10_000},
        {"signature": "\ud800" * 10},  # a lone surrogate: not UTF-8, sqlite3 cannot bind it
        {"cell_id": "BTC-USD:100:\x00"},
        {"address": ""},
        {"multiplier_bps": -1},
        {"chain_id": 0},
    ],
)
def test_each_kind_of_hostile_bet_is_refused_alone(
    conn: sqlite3.Connection, bad: dict[str, object]
) -> None:
    write.apply_batch(conn, [Deposit(address="0xaa", amount=100_000, ref="d", at=NOW)], NOW)
    batch: list[WriterRequest] = [placed_bet(1), hostile(2, **bad), placed_bet(3)]
    by_id = answers(write.apply_batch(conn, batch, NOW))
    assert isinstance(by_id["bet-1"], BetConfirmed) and isinstance(by_id["bet-3"], BetConfirmed)
    assert isinstance(by_id["bet-2"], BetRejected)
    assert by_id["bet-2"].reason in ("invalid_request", "amount_out_of_range")
    assert integrity_check(conn) == []


def test_an_item_that_raises_is_refused_and_its_partial_work_undone(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items that pass every check and still raise half-way — here a bug in the code that
    writes their ledger row, *after* their money moved: a deposit and a winning settlement.
    Each is undone alone (SAVEPOINT: rows and balances), the rest of the batch commits, and the
    balances announced are the committed ones. A tick past 2⁶³ is dropped alone too."""
    write.apply_batch(
        conn,
        [Deposit(address="0xaa", amount=100_000, ref="d", at=NOW), placed_bet(1), placed_bet(2)],
        NOW,
    )
    real_post = write._BatchWriter.post

    def buggy_post(self: write._BatchWriter, address: str, m: ledger.Movement, a: int, ref: str):  # type: ignore[no-untyped-def]
        if ref in ("bet-1", "bad"):
            raise RuntimeError(f"a bug writing {ref}")
        return real_post(self, address, m, a, ref)

    monkeypatch.setattr(write._BatchWriter, "post", buggy_post)

    def resolve(bet_id: str, status: str) -> Outcome:
        won = status == "won"
        return Outcome(
            bet_id=bet_id,
            address="0xaa",
            status=status,  # type: ignore[arg-type]
            amount=1_000,
            payout=30_000 if won else 0,
            decided_by=DecidedBy(ts=NOW, price=1_500) if won else None,
            reason="touch" if won else "column_end",
            at=NOW,
        )

    ticks = StoreTicks(
        ticks=(
            Tick(symbol="BTC-USD", ts=NOW, price=1),
            Tick(symbol="BTC-USD", ts=2**64, price=2),
            Tick(symbol="BTC-USD", ts=NOW + 1, price=3),
        )
    )
    batch: list[WriterRequest] = [
        Deposit(address="0xbb", amount=500, ref="bad", at=NOW),
        Settle(outcomes=(resolve("bet-1", "won"), resolve("bet-2", "lost"))),
        ticks,
        placed_bet(3),
        Deposit(address="0xbb", amount=700, ref="good", at=NOW),
    ]
    events = write.apply_batch(conn, batch, NOW)

    posted = {e.ref: e for e in events if isinstance(e, EntryPosted)}
    assert posted["bad"].entry is None and posted["bad"].error == "internal_error"
    assert posted["good"].entry is not None
    resolved = [e.bet.bet_id for e in events if isinstance(e, BetResolved)]
    assert resolved == ["bet-2"]
    assert isinstance(answers(events)["bet-3"], BetConfirmed)
    bet1 = read.get_bet(conn, "bet-1")
    assert bet1 is not None and bet1.status == "confirmed"  # left open, not paid
    # 100_000 − 3 stakes; bet-2's stake gone (lost), bet-1's and bet-3's still locked.
    assert read.get_balance(conn, "0xaa") == ledger.Account(97_000, 2_000)
    assert read.get_balance(conn, "0xbb") == ledger.Account(700, 0)
    announced = {
        e.address: (e.available, e.locked) for e in events if isinstance(e, BalanceChanged)
    }
    # Only the deposit's account gets a BalanceChanged; bet events carry their own balance,
    # and the last one announced for 0xaa is the committed one.
    assert announced == {"0xbb": (700, 0)}
    last_bet = [e for e in events if isinstance(e, BetConfirmed | BetResolved)][-1]
    assert last_bet.balance == Balance(available=97_000, locked=2_000)
    assert [t.price for t in read.ticks_range(conn, "BTC-USD").ticks] == [1, 3]
    monkeypatch.undo()
    assert integrity_check(conn) == []


def test_a_broken_ledger_still_stops_the_writer(conn: sqlite3.Connection) -> None:
    """The one per-item error that is fatal: the stored state contradicts the money rules."""
    write.apply_batch(conn, [Deposit(address="0xaa", amount=10_000, ref="d", at=NOW)], NOW)
    write.apply_batch(conn, [placed_bet(1)], NOW)
    conn.execute("UPDATE accounts SET locked = 0 WHERE address = '0xaa'")
    outcome = Outcome(
        bet_id="bet-1",
        address="0xaa",
        status="lost",
        amount=1_000,
        payout=0,
        decided_by=None,
        reason="column_end",
        at=NOW,
    )
    with pytest.raises(ledger.LedgerError):
        write.apply_batch(conn, [Settle(outcomes=(outcome,)), placed_bet(2)], NOW)
    assert read.get_bet(conn, "bet-2") is None  # rolled back whole


def test_fatal_errors_are_told_apart_from_one_items_errors() -> None:
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    corrupt.sqlite_errorcode = sqlite3.SQLITE_CORRUPT  # type: ignore[attr-defined]
    ioerr = sqlite3.OperationalError("disk I/O error")
    ioerr.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # type: ignore[attr-defined]
    constraint = sqlite3.IntegrityError("CHECK constraint failed")
    constraint.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT_CHECK  # type: ignore[attr-defined]
    assert (
        write.is_fatal(corrupt)
        and write.is_fatal(ioerr)
        and write.is_fatal(ledger.LedgerError("x"))
    )
    for harmless in (
        constraint,
        OverflowError("Python int too large"),
        sqlite3.InterfaceError("bad binding"),
        ValueError("x"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ):
        assert not write.is_fatal(harmless), harmless


# ── the batcher actor, and a real server ──────────────────────────────────────────────────────


async def test_the_batcher_answers_every_item_and_lives_on(tmp_path: Path) -> None:
    cfg = BatcherConfig(max_batch=64, max_wait_ms=50, queue_size=128, busy_timeout_ms=1)
    send, receive = trio.open_memory_channel[WriterRequest](128)
    fanout = CommittedFanout()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            batcher.run, cfg, Clock(epoch_ms=NOW), receive, fanout.publish, tmp_path / "t.db"
        )
        with fanout.expect_entry("d") as funded:
            send.send_nowait(Deposit(address="0xaa", amount=100_000, ref="d", at=NOW))
            await funded.wait()
        batch = [placed_bet(n) for n in range(9)] + [hostile(9, min_multiplier_bps=OVERFLOW)]
        waiters = []
        with fanout.subscribe(64) as sub:
            for bet in batch:  # all in one batch: queued before the writer wakes
                send.send_nowait(bet)
            while len(waiters) < 10:
                event = await sub.receive()
                if isinstance(event, BetConfirmed | BetRejected):
                    waiters.append(event)
        kinds = sorted(type(e).__name__ for e in waiters)
        assert kinds == ["BetConfirmed"] * 9 + ["BetRejected"]
        with fanout.expect_bet("bet-10") as later:
            send.send_nowait(placed_bet(10))
            assert isinstance(await later.wait(), BetConfirmed)  # the writer lives on
        send.close()


async def test_a_hostile_item_on_a_live_server_costs_nobody_else_their_bet(server: Server) -> None:
    """Through the real server: nine players' bets answered 202 and one hostile item that got
    past admission (injected where the edge hands bets over) share a batch; the nine are
    confirmed, the server keeps serving."""
    players = []
    cell = await pick_cell(server, min_lead_ms=5000)
    for _ in range(9):
        p = server.player()
        await p.login()
        await p.deposit(10_000_000)
        players.append(p)
    svc = server.running.services
    accepted = []
    for i, p in enumerate(players):
        r = await p.place(cell_id=cell["cell_id"], amount=1_000_000)
        assert r.status_code == 202, r.text
        accepted.append((p, r.json()["bet_id"]))
        if i == 4:
            svc.writer.send_nowait(hostile(77, min_multiplier_bps=OVERFLOW))
    for p, bet_id in accepted:
        with trio.fail_after(10):
            while True:
                r = await p.get(f"/api/bets/{bet_id}")
                if r.json()["status"] != "pending":
                    break
                await trio.sleep(0.02)
        assert r.json()["status"] == "confirmed", r.text
    await players[0].deposit(1)  # the writer lives on: a deposit commits (201)
    r = await players[0].get("/api/balance")
    assert r.status_code == 200 and r.json()["locked"] == 1_000_000


# ── a fatal error: the writer stops, and readiness says so (issue 9, defect 9) ────────────────


async def test_a_writer_stopped_by_a_broken_database_fails_readiness_and_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`EdgeServices.writer_alive` used to be never set: a dead writer left /readyz passing
    while every bet queued forever. Now the writer's lifetime drives it: after a fatal error
    /readyz and /healthz fail, writes answer 503 at once, reads and /livez still answer, and
    the process ends with the error when it is stopped."""
    broken = sqlite3.DatabaseError("database disk image is malformed")
    broken.sqlite_errorcode = sqlite3.SQLITE_CORRUPT  # type: ignore[attr-defined]

    def corrupt(*args: object, **kwargs: object) -> list[Committed]:
        raise broken

    checked = False
    try:
        async with serving(tmp_path) as server:
            client = server.http()
            assert (await client.get("/readyz")).status_code == 200
            player = server.player()
            await player.login()
            await player.deposit(10_000_000)
            monkeypatch.setattr(write, "apply_batch", corrupt)
            cell = await pick_cell(server, min_lead_ms=3000)
            r = await player.place(cell_id=cell["cell_id"], amount=1_000_000)
            # Queued, and its batch meets the broken file: never committed, so never a 202
            # (answers follow the commit); the writer's death ends the wait with a 503.
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
            assert not server.running.services.writer_alive()
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["database"] == "fail", r.text
            assert (await client.get("/healthz")).json()["status"] == "fail"
            assert (await client.get("/livez")).status_code == 200
            other = next(
                c
                for c in placeable_cells(await server.grid(), after_ts=server.now() + 2000)
                if c["cell_id"] != cell["cell_id"]
            )
            r = await player.place(cell_id=other["cell_id"], amount=1_000_000)
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
            r = await player.http.post("/api/deposits", json={"amount": 5}, headers=player.auth)
            assert r.status_code == 503, r.text
            assert (await player.get("/api/balance")).status_code == 200
            checked = True
    except BaseException as stopped:  # the server's own error, possibly in trio's groups
        assert checked, "the assertions above failed"
        while isinstance(stopped, BaseExceptionGroup) and len(stopped.exceptions) == 1:
            stopped = stopped.exceptions[0]
        assert isinstance(stopped, RuntimeError) and "fatal" in str(stopped), repr(stopped)
        assert stopped.__cause__ is broken
    else:
        raise AssertionError("the server should have ended with the writer's error")
