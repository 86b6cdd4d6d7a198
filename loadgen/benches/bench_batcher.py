"""Bets per second through the batcher, against a raw `executemany` ceiling on the same disk.

Both sides write the same rows (a bet, its stake's account update, its ledger row) into the same
schema with the same indexes, in transactions of `max_batch` bets, `synchronous=FULL`, in files
side by side, in the same run, so the ratio says what the batcher's per-item decisions, events
and thread hops cost — not how fast this machine's disk is. The batcher is driven in-process:
a producer pushes pre-built `PlaceBet`s into its channel (blocking when full, like a saturated
edge) and the clock stops at the last confirmation. `run` returns the figures; the loadgen CLI
prints or stores them.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from actors import batcher
from actors.fanout import CommittedFanout
from tap.config import BatcherConfig
from tap.messages import BetConfirmed, BetRejected, Committed, Deposit, PlaceBet, WriterRequest
from tap.runtime.clock import Clock
from tap.store import connect, write

STAKE = 1_000  # units per bet; every account is funded for all of its bets
EPOCH_MS = 1_732_290_000_000


def _address(n: int) -> str:
    return f"0x{n:040x}"


def _bets(count: int, accounts: int) -> list[PlaceBet]:
    return [
        PlaceBet(
            bet_id=f"bench-{n:08d}",
            address=_address(n % accounts),
            cell_id=f"BTC-USD:{346458012 + n // accounts}:{n % 97}",
            symbol="BTC-USD",
            col=346458012 + n // accounts,
            row=n % 97,
            t_start=0,
            t_end=5_000,
            price_lo=0,
            price_hi=1_000,
            amount=STAKE,
            multiplier_bps=29_600,
            nonce=f"bench-nonce-{n:08d}",
            accepted_at=EPOCH_MS,
            timestamp=EPOCH_MS,
            chain_id=31337,
            min_multiplier_bps=0,
            signature="ab" * 64,
        )
        for n in range(count)
    ]


def _fund(path: Path, accounts: int, per_account: int) -> None:
    conn = connect.open_writer(path)
    deposits: list[WriterRequest] = [
        Deposit(address=_address(a), amount=per_account, ref=f"fund-{a}", at=EPOCH_MS)
        for a in range(accounts)
    ]
    write.apply_batch(conn, deposits, EPOCH_MS)
    conn.close()


def executemany_ceiling(path: Path, bets: Sequence[PlaceBet], max_batch: int) -> float:
    """Seconds to write the same rows with three `executemany` calls per transaction and no
    per-item logic: the fastest this schema can take these bets from Python."""
    conn = connect.open_connection(path)
    bet_sql = (
        "INSERT INTO bets (bet_id, address, cell_id, symbol, col, row, t_start, t_end, "
        "price_lo, price_hi, amount, multiplier_bps, nonce, status, accepted_at, confirmed_at, "
        "timestamp, chain_id, min_multiplier_bps, signature) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'confirmed', ?, ?, ?, ?, ?, ?)"
    )
    debit_sql = (
        "UPDATE accounts SET available = available - ?, locked = locked + ? WHERE address = ?"
    )
    entry_sql = (
        "INSERT INTO ledger (address, kind, amount, locked_delta, balance_after, ref, at) "
        "VALUES (?, 'stake', ?, ?, ?, ?, ?)"
    )
    available = dict(conn.execute("SELECT address, available FROM accounts").fetchall())
    chunks = []
    for i in range(0, len(bets), max_batch):
        chunk = bets[i : i + max_batch]
        entries = []
        for b in chunk:
            available[b.address] -= b.amount
            entries.append(
                (b.address, -b.amount, b.amount, available[b.address], b.bet_id, EPOCH_MS)
            )
        chunks.append(
            (
                [
                    (
                        b.bet_id,
                        b.address,
                        b.cell_id,
                        b.symbol,
                        b.col,
                        b.row,
                        b.t_start,
                        b.t_end,
                        b.price_lo,
                        b.price_hi,
                        b.amount,
                        b.multiplier_bps,
                        b.nonce,
                        b.accepted_at,
                        EPOCH_MS,
                        b.timestamp,
                        b.chain_id,
                        b.min_multiplier_bps,
                        b.signature,
                    )
                    for b in chunk
                ],
                [(b.amount, b.amount, b.address) for b in chunk],
                entries,
            )
        )
    started = time.perf_counter()
    for bet_rows, debit_rows, entry_rows in chunks:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(bet_sql, bet_rows)
        conn.executemany(debit_sql, debit_rows)
        conn.executemany(entry_sql, entry_rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def _through_batcher(
    path: Path, bets: Sequence[PlaceBet], cfg: BatcherConfig
) -> dict[str, Any]:
    send, receive = trio.open_memory_channel[WriterRequest](cfg.queue_size)
    done = trio.Event()
    tally = {"confirmed": 0, "rejected": 0, "batches": 0}

    def count(events: Sequence[Committed]) -> None:
        tally["batches"] += 1
        for event in events:
            if isinstance(event, BetConfirmed):
                tally["confirmed"] += 1
            elif isinstance(event, BetRejected):
                tally["rejected"] += 1
        if tally["confirmed"] + tally["rejected"] == len(bets):
            done.set()

    fanout = CommittedFanout()

    def publish(events: Sequence[Committed]) -> None:
        count(events)
        fanout.publish(events)

    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run, cfg, Clock(), receive, publish, path)
        started = time.perf_counter()
        async with send:
            for bet in bets:
                try:
                    send.send_nowait(bet)  # what the edge does...
                except trio.WouldBlock:
                    await send.send(bet)  # ...except that a saturated producer waits, not 503s
            await done.wait()
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, **tally}


def run(
    *,
    bets: int = 20_000,
    accounts: int = 1_000,
    max_batch: int = 512,
    max_wait_ms: int = 2,
    queue_size: int = 4096,
    rounds: int = 3,
    directory: str | Path | None = None,
) -> dict[str, Any]:
    """Measure both paths `rounds` times, alternating, on fresh files in `directory` (a temporary
    one by default; give one on the disk you care about).

    Figures are best-of-rounds for each side (the least-disturbed run: on a shared machine the
    noise only ever slows a run down), and `ratio` = best batcher / best ceiling. The per-round
    rates are included so a reader can see the spread.
    """
    workload = _bets(bets, accounts)
    per_account = STAKE * (bets // accounts + 1)
    cfg = BatcherConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size)
    ceiling_s: list[float] = []
    throughs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=directory, prefix="tap-bench-") as tmp:
        for r in range(rounds):
            ceiling_db = Path(tmp) / f"ceiling-{r}.db"
            batcher_db = Path(tmp) / f"batcher-{r}.db"
            _fund(ceiling_db, accounts, per_account)
            _fund(batcher_db, accounts, per_account)
            ceiling_s.append(executemany_ceiling(ceiling_db, workload, max_batch))
            throughs.append(trio.run(_through_batcher, batcher_db, workload, cfg))
            ceiling_db.unlink()
            batcher_db.unlink()
    best = min(throughs, key=lambda t: float(t["seconds"]))
    batcher_rate = bets / best["seconds"]
    ceiling_rate = bets / min(ceiling_s)
    return {
        "bets": bets,
        "accounts": accounts,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "rounds": rounds,
        "sqlite_version": sqlite3.sqlite_version,
        "synchronous": "FULL",
        "batcher_bets_per_s": round(batcher_rate),
        "ceiling_bets_per_s": round(ceiling_rate),
        "ratio": round(batcher_rate / ceiling_rate, 3),
        "batcher_confirmed": best["confirmed"],
        "batcher_rejected": best["rejected"],
        "batcher_batches": best["batches"],
        "mean_batch_size": round(bets / max(1, best["batches"]), 1),
        "batcher_rounds_bets_per_s": [round(bets / t["seconds"]) for t in throughs],
        "ceiling_rounds_bets_per_s": [round(bets / s) for s in ceiling_s],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
