"""`tap replay`: bets resolved live re-resolve identically from the stored ticks (exit 0); a
tampered outcome or tick log is reported, bet by bet (exit 1)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tap.config import Config, load_config
from tap.messages import DecidedBy, Deposit, Outcome, PlaceBet, Settle, StoreTicks, Tick
from tap.resolver import OpenBet, ResolverIndex
from tap.store import connect, write
from tap.store.replay import replay_range

ROOT = Path(__file__).resolve().parent.parent
COL_MS = 5_000  # the default market's grid
ROW = 1_000
C0 = 346_458_012  # the first column of the test's tick log
T0 = C0 * COL_MS
FROM, TO = T0, T0 + 6 * COL_MS


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        "TAP__SERVER__DB_PATH": str(tmp_path / "tap.db"),
        "TAP__ARCHIVE__DIR": str(tmp_path / "archive"),
        "TAP__ARCHIVE__BACKUP_DIR": str(tmp_path / "backups"),
    }


def tap(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tap.runtime.cli", *args],
        env={**os.environ, **environment(tmp_path), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def place(bet_id: str, col: int, row: int, multiplier_bps: int = 25_000) -> PlaceBet:
    return PlaceBet(
        bet_id=bet_id,
        address="0xaa",
        cell_id=f"BTC-USD:{col}:{row}",
        symbol="BTC-USD",
        col=col,
        row=row,
        t_start=col * COL_MS,
        t_end=(col + 1) * COL_MS,
        price_lo=row * ROW,
        price_hi=(row + 1) * ROW,
        amount=10_000,
        multiplier_bps=multiplier_bps,
        nonce=f"nonce-{bet_id}-000000",
        accepted_at=T0 - COL_MS,
        timestamp=T0 - COL_MS,
        chain_id=31337,
        min_multiplier_bps=0,
        signature="ab" * 64,
    )


BETS = [
    place("win-first-column", C0 + 1, 10_000),  # the price sits in this row
    place("lose-untouched", C0 + 1, 10_005),
    place("win-after-a-move", C0 + 2, 10_001, multiplier_bps=41_234),
    place("void-by-gap", C0 + 3, 10_009),  # a 3.5 s silence inside its window
    place("lose-late-column", C0 + 4, 10_003),
]


def price_at(ts: int) -> int:
    return 10_000_500 if ts < T0 + 2 * COL_MS else 10_001_500


def tick_log() -> list[Tick]:
    gap = range(T0 + 3 * COL_MS + 250, T0 + 3 * COL_MS + 3_750)  # > max_gap_ms (2000)
    return [
        Tick(symbol="BTC-USD", ts=ts, price=price_at(ts))
        for ts in range(T0 - 1_000, T0 + 6 * COL_MS + 500, 250)
        if ts not in gap
    ]


def resolve_live(cfg: Config) -> list[Outcome]:
    """What the live resolver decides, tick by tick, for BETS on tick_log()."""
    index = ResolverIndex("BTC-USD", COL_MS, ROW, cfg.feed.max_gap_ms)
    for b in BETS:
        assert index.add(OpenBet(**{f: getattr(b, f) for f in OpenBet.__struct_fields__})) == []
    outcomes: list[Outcome] = []
    for t in tick_log():
        outcomes += index.on_tick(t.ts, t.price)
    return outcomes


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    cfg = load_config(environ=environment(tmp_path))
    outcomes = resolve_live(cfg)
    assert {o.bet_id: o.status for o in outcomes} == {
        "win-first-column": "won",
        "lose-untouched": "lost",
        "win-after-a-move": "won",
        "void-by-gap": "void",
        "lose-late-column": "lost",
    }
    conn = connect.open_writer(cfg.server.db_path)
    try:
        write.apply_batch(
            conn,
            [Deposit(address="0xaa", amount=1_000_000, ref="d1", at=T0 - COL_MS), *BETS],
            T0 - COL_MS,
        )
        write.apply_batch(conn, [StoreTicks(ticks=tuple(tick_log()))], T0 + 6 * COL_MS)
        write.apply_batch(conn, [Settle(outcomes=tuple(outcomes))], T0 + 6 * COL_MS)
    finally:
        conn.close()
    return cfg


def tamper(cfg: Config, sql: str, *params: object) -> None:
    conn = sqlite3.connect(cfg.server.db_path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def test_live_outcomes_replay_with_no_mismatch(tmp_path: Path, cfg: Config) -> None:
    done = tap(tmp_path, "replay", "--from", str(FROM), "--to", str(TO))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replay: 5 bet(s) re-resolved, 0 mismatch(es)" in done.stdout


def test_a_tampered_outcome_is_named_and_fails_the_command(tmp_path: Path, cfg: Config) -> None:
    tamper(
        cfg,
        "UPDATE bets SET status = 'lost', payout = 0 WHERE bet_id = ?",
        "win-after-a-move",
    )
    done = tap(tmp_path, "replay", "--from", str(FROM), "--to", str(TO))
    assert done.returncode == 1
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("bet ")]
    assert line.startswith("bet win-after-a-move: stored lost, payout 0")
    assert "replay won, payout 41234" in line
    assert "1 mismatch(es)" in done.stdout


def test_a_tampered_deciding_tick_is_a_mismatch(cfg: Config) -> None:
    tamper(cfg, "UPDATE bets SET decided_ts = decided_ts + 250 WHERE bet_id = 'lose-untouched'")
    mismatches, checked = replay_range(cfg, FROM, TO)
    assert checked == 5
    assert len(mismatches) == 1
    assert mismatches[0].startswith("bet lose-untouched: stored lost, payout 0, decided by tick")


def test_a_tampered_tick_log_changes_the_replayed_outcome(cfg: Config) -> None:
    """Filling the gap in the stored ticks turns the voided bet into a loss on replay."""
    tamper(
        cfg,
        "INSERT INTO ticks (symbol, ts, price) VALUES ('BTC-USD', ?, 10001500)",
        T0 + 3 * COL_MS + 2_000,
    )
    mismatches, _ = replay_range(cfg, FROM, TO)
    assert len(mismatches) == 1
    assert mismatches[0].startswith("bet void-by-gap: stored void")
    assert "replay lost, payout 0" in mismatches[0]


def test_only_bets_whose_window_lies_in_the_range_are_checked(cfg: Config) -> None:
    mismatches, checked = replay_range(cfg, T0 + COL_MS, T0 + 2 * COL_MS)
    assert (mismatches, checked) == ([], 2)
    assert replay_range(cfg, T0 + COL_MS + 1, T0 + 2 * COL_MS) == ([], 0)


def test_a_bet_off_the_current_grid_is_reported_not_guessed(tmp_path: Path, cfg: Config) -> None:
    wider = load_config(environ={**environment(tmp_path), "TAP__MARKETS__0__COLUMN_MS": "10000"})
    mismatches, checked = replay_range(wider, FROM, TO)
    assert checked == 5
    assert all("not on the current BTC-USD grid" in m for m in mismatches)


def test_trades_sharing_a_millisecond_replay_as_the_live_resolver_decided(tmp_path: Path) -> None:
    """Issue 9, defect 5: several trades in one ms. The live resolver meets them in arrival order
    (here the higher price first); the log keeps them per ms in price order. Both touch the band
    of `win-same-ms` and the first decides it live; the loser's column closes at a crowded ms.
    Replay must agree: same status, payout and deciding ms, a deciding price the log holds."""
    cfg = load_config(environ=environment(tmp_path / "same-ms"))
    Path(cfg.server.db_path).parent.mkdir(parents=True, exist_ok=True)
    bets = [place("win-same-ms", C0 + 1, 10_000), place("lose-crowded-close", C0 + 1, 10_005)]
    t1 = T0 + COL_MS + 1_000
    arrival = [
        Tick(symbol="BTC-USD", ts=ts, price=p)
        for ts, p in [
            (T0 + COL_MS - 100, 9_999_000),
            (T0 + COL_MS + 500, 9_999_000),
            (t1, 9_999_000),  # below the band, then two touches in the same ms
            (t1, 10_000_900),
            (t1, 10_000_100),
            *((T0 + COL_MS + 1_000 + 500 * i, 9_999_000) for i in range(1, 8)),
            (T0 + 2 * COL_MS, 9_999_500),  # the column closes at a ms with two trades
            (T0 + 2 * COL_MS, 9_999_100),
        ]
    ]
    index = ResolverIndex("BTC-USD", COL_MS, ROW, cfg.feed.max_gap_ms)
    for b in bets:
        index.add(OpenBet(**{f: getattr(b, f) for f in OpenBet.__struct_fields__}))
    outcomes: list[Outcome] = []
    for t in arrival:
        outcomes += index.on_tick(t.ts, t.price)
    decided = {o.bet_id: (o.status, o.decided_by) for o in outcomes}
    assert decided == {
        "win-same-ms": ("won", DecidedBy(ts=t1, price=10_000_900)),
        "lose-crowded-close": ("lost", DecidedBy(ts=T0 + 2 * COL_MS, price=9_999_500)),
    }
    conn = connect.open_writer(cfg.server.db_path)
    try:
        deposit = Deposit(address="0xaa", amount=1_000_000, ref="d1", at=T0 - COL_MS)
        write.apply_batch(conn, [deposit, *bets], T0 - COL_MS)
        write.apply_batch(conn, [StoreTicks(ticks=tuple(arrival))], T0 + 3 * COL_MS)
        write.apply_batch(conn, [Settle(outcomes=tuple(outcomes))], T0 + 3 * COL_MS)
    finally:
        conn.close()
    assert replay_range(cfg, FROM, TO) == ([], 2)
    # A deciding price the log does not hold at that ms is still a mismatch.
    tamper(cfg, "UPDATE bets SET decided_price = 10000500 WHERE bet_id = 'win-same-ms'")
    mismatches, _ = replay_range(cfg, FROM, TO)
    assert len(mismatches) == 1 and mismatches[0].startswith("bet win-same-ms: stored won")
