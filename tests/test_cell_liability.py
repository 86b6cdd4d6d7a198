"""Per-cell liability cap (issue 9, from defect 10): the sum of potential payouts
(amount × multiplier_bps // 10000) of the open bets on one cell is capped by
`markets[].max_cell_liability`. The writer is the final authority (`exposure_limit`, stored, no
money moved); the table it keeps is recomputed from the open bets when a writer starts; the
edge refuses at once a bet past the cap on its own."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

import pytest
import trio
from msgspec.structs import replace

from actors import batcher
from actors.fanout import CommittedFanout
from tap import ledger
from tap.config import BatcherConfig
from tap.messages import (
    BetConfirmed,
    BetRejected,
    Committed,
    Deposit,
    Outcome,
    PlaceBet,
    Settle,
    WriterRequest,
)
from tap.runtime.clock import Clock
from tap.store import connect, read, write
from tap.store.integrity import integrity_check
from tests.builders import NOW
from tests.e2e import pick_cell, serving

CELL = "BTC-USD:100:7"
CAPS = {"BTC-USD": 50_000}
PAYOUT = 2_500  # 1_000 × 25_000 bps


def on_cell(n: int, address: str, amount: int = 1_000) -> PlaceBet:
    return PlaceBet(
        bet_id=f"bet-{n}",
        address=address,
        cell_id=CELL,
        symbol="BTC-USD",
        col=100,
        row=7,
        t_start=500_000,
        t_end=505_000,
        price_lo=7_000,
        price_hi=8_000,
        amount=amount,
        multiplier_bps=25_000,
        nonce=f"nonce-{n:012d}",
        accepted_at=NOW,
        timestamp=NOW,
        chain_id=31337,
        min_multiplier_bps=0,
        signature="ab" * 64,
    )


def player(n: int) -> str:
    return f"0x{n:040x}"


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = connect.open_writer(tmp_path / "tap.db", synchronous="OFF")
    write.apply_batch(
        c, [Deposit(address=player(n), amount=10**6, ref=f"d{n}", at=NOW) for n in range(40)], NOW
    )
    yield c  # type: ignore[misc]
    c.close()


def verdicts(events: list[Committed]) -> dict[str, str]:
    out = {}
    for e in events:
        if isinstance(e, BetConfirmed):
            out[e.bet.bet_id] = "confirmed"
        elif isinstance(e, BetRejected):
            out[e.bet.bet_id] = e.reason
    return out


def lose(bet_id: str) -> Settle:
    return Settle(
        outcomes=(
            Outcome(
                bet_id=bet_id,
                address="",
                status="lost",
                amount=0,
                payout=0,
                decided_by=None,
                reason="column_end",
                at=NOW,
            ),
        )
    )


def test_a_cell_takes_bets_up_to_its_cap_and_refuses_the_next(conn: sqlite3.Connection) -> None:
    bets: list[WriterRequest] = [on_cell(n, player(n)) for n in range(21)]
    got = verdicts(write.apply_batch(conn, bets, NOW, cell_caps=CAPS))
    assert [got[f"bet-{n}"] for n in range(20)] == ["confirmed"] * 20  # 20 × 2_500 = 50_000
    assert got["bet-20"] == "exposure_limit"
    refused = read.get_bet(conn, "bet-20")
    assert refused is not None and refused.status == "rejected"  # stored: the nonce is burned
    assert read.get_balance(conn, player(20)) == ledger.Account(10**6, 0)  # no money moved
    assert write.cell_liability(conn, CELL) == 50_000
    # Another cell is another budget; another market without a cap has none.
    other = replace(on_cell(30, player(30)), bet_id="bet-30", cell_id="BTC-USD:100:8", row=8)
    eth = replace(
        on_cell(31, player(31)), bet_id="bet-31", cell_id="ETH-USD:100:7", symbol="ETH-USD"
    )
    assert verdicts(write.apply_batch(conn, [other, eth], NOW, cell_caps=CAPS)) == {
        "bet-30": "confirmed",
        "bet-31": "confirmed",
    }
    # A settled bet frees its share: one more fits, then the cell is full again.
    write.apply_batch(conn, [lose("bet-0")], NOW, cell_caps=CAPS)
    assert write.cell_liability(conn, CELL) == 50_000 - PAYOUT
    more = [on_cell(n, player(n)) for n in (21, 22)]
    assert verdicts(write.apply_batch(conn, more, NOW, cell_caps=CAPS)) == {
        "bet-21": "confirmed",
        "bet-22": "exposure_limit",
    }
    assert integrity_check(conn) == []
    conn.execute("UPDATE cell_liability SET total = total + 1 WHERE cell_id = ?", (CELL,))
    assert integrity_check(conn) == [
        f"cell {CELL}: liability {50_000 - PAYOUT + PAYOUT + 1} but its open bets may pay 50000"
    ]


def test_a_bet_refused_for_funds_takes_no_room_and_one_past_the_cap_alone_is_refused(
    conn: sqlite3.Connection,
) -> None:
    broke = on_cell(1, "0x" + "f" * 40)  # no account: insufficient_funds
    huge = on_cell(2, player(2), amount=30_000)  # 75_000 alone
    assert verdicts(write.apply_batch(conn, [broke, huge], NOW, cell_caps=CAPS)) == {
        "bet-1": "insufficient_funds",
        "bet-2": "exposure_limit",
    }
    assert write.cell_liability(conn, CELL) == 0


def test_the_liability_is_recomputed_from_open_bets_when_a_writer_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tap.db"
    conn = connect.open_writer(path, synchronous="OFF")
    write.apply_batch(
        conn,
        [Deposit(address=player(n), amount=10**6, ref=f"d{n}", at=NOW) for n in range(25)],
        NOW,
    )
    write.apply_batch(conn, [on_cell(n, player(n)) for n in range(12)], NOW)  # no cap then
    write.apply_batch(conn, [lose("bet-0"), lose("bet-1")], NOW)
    conn.execute("DELETE FROM cell_liability")  # e.g. written by a version without the cap
    conn.close()

    async def start_writer_and_bet() -> dict[str, str]:
        send, receive = trio.open_memory_channel[WriterRequest](64)
        fanout = CommittedFanout()
        cfg = BatcherConfig(max_batch=64, max_wait_ms=1, queue_size=64, busy_timeout_ms=1)
        answers: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    batcher.run, cfg, Clock(epoch_ms=NOW), receive, fanout.publish, path,
                    synchronous="OFF", cell_caps=CAPS,
                )
            )  # fmt: skip
            with fanout.subscribe(64) as sub:
                for n in range(12, 25):
                    send.send_nowait(on_cell(n, player(n)))
                while len(answers) < 13:
                    answers.update(verdicts([await sub.receive()]))
            send.close()
        return answers

    answers = trio.run(start_writer_and_bet)
    # 10 open (25_000) at start: 10 more fit, the other 3 are refused.
    assert sorted(answers.values()) == ["confirmed"] * 10 + ["exposure_limit"] * 3
    reopened = connect.open_connection(path, read_only=True)
    try:
        assert write.cell_liability(reopened, CELL) == 50_000
    finally:
        reopened.close()


async def test_the_cap_through_the_server(tmp_path: Path) -> None:
    """The bet past the cell's cap is 422 exposure_limit under Prefer: wait (the writer's
    verdict); one past the cap on its own is refused at once by the edge."""
    cap = 3_000_000  # 3.00
    async with serving(tmp_path, markets__0__max_cell_liability=cap) as server:
        cell = await pick_cell(server, min_lead_ms=5000)
        stake = 100_000
        confirmed: list[int] = []  # the potential payout of each confirmed bet (its own quote)
        while True:
            p = server.player()
            await p.login()
            await p.deposit(10 * stake)
            r = await p.place(cell_id=cell["cell_id"], amount=stake, wait=5)
            if r.status_code != 201:
                break
            confirmed.append(stake * r.json()["multiplier_bps"] // 10_000)
            assert len(confirmed) <= cap // min(confirmed) + 1, "the cap is not enforced"
        assert r.status_code == 422 and r.json()["error"]["code"] == "exposure_limit", r.text
        assert cap - 2 * max(confirmed) < sum(confirmed) <= cap  # full, or nearly
        alone = cap * 10_000 // cell["multiplier_bps"] + stake  # past the cap by itself
        r = await p.place(cell_id=cell["cell_id"], amount=alone)
        assert r.status_code == 422 and r.json()["error"]["code"] == "exposure_limit", r.text
