"""`python -m loadgen bench betpath`: tap's own CPU per bet, without the HTTP/WS stack.

The same-run HTTP benches measure tap *with* Quart and Hypercorn; this one isolates what tap
itself adds per bet, so the two can be told apart:
- admission: `BetDesk.place` (chain, window, nonce format, Ed25519 verify, breaker, cached quote,
  limits, in-memory hot state, hand-over) on pre-signed unique bets;
- after commit: the committed fan-out, ledger-sync, and the hub turning `BetConfirmed` +
  `BalanceChanged` into the player's WS frames (encoded, queued; the socket write is the stack's);
- the writer: `apply_batch` of the same bets in batches of 64 on a real SQLite file
  (`synchronous=FULL`), CPU time of the writer thread only (fsync waits excluded).
Figures are process CPU time per bet (`time.process_time` / `thread_time`), best of N rounds.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from actors import hub as hub_actor
from actors.fanout import CommittedFanout
from actors.ledger_sync import apply as sync_apply
from tap.admission import bet_payload
from tap.config import Config
from tap.edge.desk import BetDesk
from tap.hotstate import InMemoryHotState
from tap.messages import (
    BalanceChanged,
    Bet,
    BetConfirmed,
    BetRequest,
    Deposit,
    PlaceBet,
    WriterRequest,
)
from tap.pending import PendingBets
from tap.quotes import GridBook
from tap.sessions import Session
from tap.store import connect, write

NOW = 1_795_000_000_000
PRICE = 10_000_000


class _Market:
    def __init__(self, book: GridBook) -> None:
        self.book = book

    def quote_cell(self, cell_id: str, now_ms: int) -> Any:
        return self.book.quote(cell_id, now_ms)


class _Sink:
    def __init__(self) -> None:
        self.items: list[WriterRequest] = []

    def send_nowait(self, value: WriterRequest) -> None:
        self.items.append(value)


def _setup(n_players: int) -> tuple[Config, GridBook, list[tuple[Session, SigningKey]]]:
    cfg = Config()
    market = cfg.markets[0]
    book = GridBook(market, cfg.pricing)
    book.refresh(NOW, PRICE, NOW, 0.6, "closed")
    players = []
    for i in range(n_players):
        key = SigningKey.generate()
        address = "0x" + f"{i:040x}"
        session = Session(f"t{i}", address, key.verify_key.encode().hex(), NOW + 10**9)
        players.append((session, key))
    return cfg, book, players


def _signed_bets(
    cfg: Config, book: GridBook, players: list[tuple[Session, SigningKey]]
) -> list[tuple[Session, BetRequest]]:
    cells = [c.cell_id for c in book.view.cells if c.placeable] if book.view else []
    bets = []
    chain = cfg.auth.chain_id
    for session, key in players:
        for cell_id in cells:
            nonce = secrets.token_hex(10)
            amount = 1_000_000
            payload = bet_payload(chain, session.address, cell_id, amount, nonce, NOW, 0)
            sig = key.sign(payload).signature.hex()
            bets.append(
                (
                    session,
                    BetRequest(
                        cell_id=cell_id,
                        amount=amount,
                        nonce=nonce,
                        timestamp=NOW,
                        chain_id=chain,
                        signature=sig,
                    ),
                )
            )
    return bets


async def _admission(n_players: int) -> tuple[float, list[PlaceBet]]:
    cfg, book, players = _setup(n_players)
    bets = _signed_bets(cfg, book, players)
    hot = InMemoryHotState(cfg.auth.max_skew_ms, 1e9, 10**9)
    await hot.rebuild({s.address: 10**15 for s, _ in players})
    sink = _Sink()
    desk = BetDesk(cfg, lambda: NOW, hot, _Market(book), lambda s: False, sink, PendingBets())
    start = time.process_time()
    for session, req in bets:
        await desk.place(session, req)
    per_bet = (time.process_time() - start) / len(bets)
    return per_bet, [r for r in sink.items if isinstance(r, PlaceBet)]


async def _after_commit(placed: list[PlaceBet]) -> float:
    cfg = Config()
    hot = InMemoryHotState(cfg.auth.max_skew_ms, 1e9, 10**9)
    pending = PendingBets()
    fanout = CommittedFanout()
    hub = hub_actor.Hub(1_000_000)
    subs = {}
    for bet in placed:
        if bet.address not in subs:
            sub = hub.connect()
            sub.set_address(bet.address)
            subs[bet.address] = sub
    events = []
    for bet in placed:
        confirmed = Bet(
            bet_id=bet.bet_id,
            address=bet.address,
            cell_id=bet.cell_id,
            amount=bet.amount,
            multiplier_bps=bet.multiplier_bps,
            nonce=bet.nonce,
            status="confirmed",
            accepted_at=bet.accepted_at,
            confirmed_at=NOW,
        )
        events.append(BetConfirmed(bet=confirmed))
        events.append(BalanceChanged(address=bet.address, available=1, locked=1, at=NOW))
    sync = fanout.subscribe(len(events) + 1, "sync")
    hub_sub = fanout.subscribe(len(events) + 1, "hub")
    start = time.process_time()
    fanout.publish(events)
    for _ in events:
        await sync_apply(hot, pending, await sync.receive())
        event = await hub_sub.receive()
        routed = hub_actor.account_frame(event)
        if routed is not None:
            hub.publish_account(*routed)
    per_bet = (time.process_time() - start) / len(placed)
    for sub in subs.values():
        hub.disconnect(sub)
    return per_bet


def _writer(placed: list[PlaceBet], directory: Path) -> float:
    conn = connect.open_writer(directory / "bench.db")
    addresses = sorted({b.address for b in placed})
    write.apply_batch(
        conn,
        [Deposit(address=a, amount=10**12, ref=f"d{a}", at=NOW) for a in addresses],
        NOW,
    )
    start = time.thread_time()
    for i in range(0, len(placed), 64):
        write.apply_batch(conn, placed[i : i + 64], NOW)
    per_bet = (time.thread_time() - start) / len(placed)
    conn.close()
    return per_bet


def run(quick: bool = False, directory: str | Path | None = None) -> dict[str, Any]:
    players = 10 if quick else 40
    rounds = 2 if quick else 3
    best: dict[str, float] = {}
    for _ in range(rounds):
        admission, placed = trio.run(_admission, players)
        after = trio.run(_after_commit, placed)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            writer = _writer(placed, Path(tmp))
        for name, value in (("admission", admission), ("after_commit", after), ("writer", writer)):
            best[name] = min(best.get(name, value), value)
    report = {name: round(v * 1e6, 1) for name, v in best.items()}
    report["total_us_per_bet"] = round(sum(best.values()) * 1e6, 1)
    report["bets_per_round"] = len(placed)
    return report


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for k, v in run(quick).items():
        print(f"{k:>20}: {v}")
