"""The archiver: what leaves the hot database, that integrity holds after, and that a run
killed at any point and run again loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace
from prometheus_client import REGISTRY

from tap.config import Config, load_config
from tap.messages import (
    BetConfirmed,
    BetRejected,
    DecidedBy,
    Deposit,
    Outcome,
    PlaceBet,
    Settle,
    StoreTicks,
    Tick,
    Withdrawal,
    WriterRequest,
)
from tap.store import archive, connect, read, write
from tap.store.integrity import integrity_check
from tests.builders import placed_bet

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400_000
NOW = 1_732_290_000_000
OLD = NOW - 40 * DAY  # past archive.after_days (30)
NEW = NOW - DAY  # within it
ETH_OPEN_T = OLD + 5_000 * 10  # the window of the one bet left open (on ETH-USD)


def config(tmp_path: Path) -> Config:
    return load_config(environ=environment(tmp_path))


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        "TAP__SERVER__DB_PATH": str(tmp_path / "tap.db"),
        "TAP__ARCHIVE__DIR": str(tmp_path / "archive"),
        "TAP__ARCHIVE__BACKUP_DIR": str(tmp_path / "backups"),
    }


def bet(n: int, address: str, amount: int, at: int, symbol: str = "BTC-USD") -> PlaceBet:
    return placed_bet(n, address, amount, at=at, col=at // 5000 + 1, symbol=symbol)


def outcome(bet_id: str, status: str, at: int) -> Outcome:
    return Outcome(
        bet_id=bet_id,
        address="",
        status=status,  # type: ignore[arg-type]
        amount=0,
        payout=0,
        decided_by=DecidedBy(ts=at, price=1) if status == "won" else None,
        reason="test",
        at=at,
    )


def dep(address: str, amount: int, ref: str, at: int) -> Deposit:
    return Deposit(address=address, amount=amount, ref=ref, at=at)


def apply(conn: sqlite3.Connection, at: int, *requests: WriterRequest) -> None:
    write.apply_batch(conn, list(requests), at)


def build(path: Path) -> None:
    """Five addresses, each pinning one rule of what may leave:

    0xaa: deposit, bet-1 won — all old — then a new deposit: the old prefix leaves.
    0xbb: deposit, bet-2 (resolved only recently), bet-3 void: only the deposit may leave;
          bet-3 is old and resolved but its rows lie past bet-2's stake.
    0xcc: deposit, bet-4 still open (ETH-USD): only the deposit leaves; the open bet's ticks stay.
    0xdd: bet-5 rejected long ago, bet-6 rejected recently: only bet-5 leaves (no rows).
    0xee: bet-7 staked, bet-8 staked and left open, bet-7 settled: bet-7's rows straddle an
          ineligible row, so nothing of 0xee leaves.
    """
    conn = connect.open_writer(path)
    try:
        apply(
            conn,
            OLD,
            dep("0xaa", 10_000, "d-aa", OLD),
            dep("0xbb", 10_000, "d-bb", OLD),
            dep("0xcc", 10_000, "d-cc", OLD),
            dep("0xee", 10_000, "d-ee", OLD),
        )
        apply(
            conn,
            OLD + 1,
            bet(1, "0xaa", 1_000, OLD),
            bet(2, "0xbb", 1_000, OLD),
            bet(3, "0xbb", 2_000, OLD),
            bet(4, "0xcc", 3_000, ETH_OPEN_T - 5_000, symbol="ETH-USD"),
            bet(5, "0xdd", 500, OLD),  # no money: rejected
            bet(7, "0xee", 1_000, OLD),
            bet(8, "0xee", 1_000, OLD, symbol="SOL-USD"),  # no ticks: holds none back
        )
        apply(
            conn,
            OLD + 2,
            Settle(outcomes=(outcome("bet-1", "won", OLD + 2), outcome("bet-3", "void", OLD + 2))),
        )
        apply(conn, OLD + 3, Settle(outcomes=(outcome("bet-7", "lost", OLD + 3),)))
        apply(conn, OLD + 4, Withdrawal(address="0xaa", amount=100, nonce="w1", ref="w1", at=OLD))
        apply(
            conn,
            NEW,
            dep("0xaa", 5, "d-aa-2", NEW),
            Settle(outcomes=(outcome("bet-2", "won", NEW),)),
            bet(6, "0xdd", 500, NEW),  # rejected recently
        )
        ticks = [
            Tick(symbol="BTC-USD", ts=NOW - 9 * DAY, price=100),
            Tick(symbol="BTC-USD", ts=NOW - 8 * DAY, price=101),
            Tick(symbol="BTC-USD", ts=NOW - 6 * DAY, price=102),
            Tick(symbol="BTC-USD", ts=NEW, price=103),
            Tick(symbol="ETH-USD", ts=ETH_OPEN_T - 9_000, price=1),  # purgeable
            Tick(symbol="ETH-USD", ts=ETH_OPEN_T - 2_000, price=2),  # the tick before the window
            Tick(symbol="ETH-USD", ts=ETH_OPEN_T + 1_000, price=3),
        ]
        apply(conn, NEW, StoreTicks(ticks=tuple(ticks)))
    finally:
        conn.close()


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    build(tmp_path / "tap.db")
    return config(tmp_path)


# ── what the database and the archive hold ──────────────────────────────────────────────────

Rows = tuple[dict[str, dict[str, Any]], dict[int, dict[str, Any]]]


def hot_rows(db_path: str) -> Rows:
    conn = sqlite3.connect(db_path)
    try:
        cur = conn.execute("SELECT * FROM bets")
        names = [d[0] for d in cur.description]
        bets = {r[1]: dict(zip(names, r, strict=True)) for r in cur}
        cur = conn.execute("SELECT * FROM ledger")
        names = [d[0] for d in cur.description]
        entries = {r[0]: dict(zip(names, r, strict=True)) for r in cur}
        return bets, entries
    finally:
        conn.close()


def archived_rows(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every record in the files of complete runs (duplicates kept, to be caught)."""
    conn = sqlite3.connect(cfg.server.db_path)
    try:
        runs = conn.execute(
            "SELECT path, manifest_sha256 FROM archive_runs "
            "WHERE status = 'deleted' AND path IS NOT NULL ORDER BY run_id"
        ).fetchall()
    finally:
        conn.close()
    bets: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for path, digest in runs:
        manifest = archive.read_manifest(Path(path), digest)
        bets += archive.read_archive_file(Path(path), archive.BETS_FILE, manifest)
        entries += archive.read_archive_file(Path(path), archive.LEDGER_FILE, manifest)
    return bets, entries


def assert_nothing_lost_or_duplicated(cfg: Config, original: Rows) -> None:
    hot_bets, hot_entries = hot_rows(cfg.server.db_path)
    arch_bets, arch_entries = archived_rows(cfg)
    bet_ids = [b["bet_id"] for b in arch_bets] + list(hot_bets)
    entry_ids = [e["entry_id"] for e in arch_entries] + list(hot_entries)
    assert sorted(bet_ids) == sorted(original[0]), "a bet was lost or duplicated"
    assert sorted(entry_ids) == sorted(original[1]), "a ledger row was lost or duplicated"
    for b in arch_bets:
        assert b == original[0][b["bet_id"]]
    for e in arch_entries:
        assert e == original[1][e["entry_id"]]
    for bet_id, b in hot_bets.items():
        assert b == original[0][bet_id]
    conn = connect.open_connection(cfg.server.db_path, read_only=True)
    try:
        assert integrity_check(conn) == []
    finally:
        conn.close()


def run_statuses(cfg: Config) -> list[str]:
    conn = sqlite3.connect(cfg.server.db_path)
    try:
        return [r[0] for r in conn.execute("SELECT status FROM archive_runs ORDER BY run_id")]
    finally:
        conn.close()


def run_dirs(cfg: Config) -> list[str]:
    root = Path(cfg.archive.dir)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


EXPECTED_BETS = {"bet-1", "bet-5"}
EXPECTED_ENTRIES = {  # (address, kind, ref)
    ("0xaa", "deposit", "d-aa"),
    ("0xaa", "stake", "bet-1"),
    ("0xaa", "payout", "bet-1"),
    ("0xaa", "withdrawal", "w1"),
    ("0xbb", "deposit", "d-bb"),
    ("0xcc", "deposit", "d-cc"),
    ("0xee", "deposit", "d-ee"),
}


# ── a clean run ──────────────────────────────────────────────────────────────────────────────


def test_old_resolved_bets_leave_with_their_rows_as_prefixes_and_integrity_holds(
    cfg: Config,
) -> None:
    original = hot_rows(cfg.server.db_path)
    conn = sqlite3.connect(cfg.server.db_path)
    balances_before = conn.execute("SELECT * FROM accounts ORDER BY address").fetchall()
    conn.close()

    report = archive.run_archive(cfg, NOW)

    arch_bets, arch_entries = archived_rows(cfg)
    assert {b["bet_id"] for b in arch_bets} == EXPECTED_BETS
    assert {(e["address"], e["kind"], e["ref"]) for e in arch_entries} == EXPECTED_ENTRIES
    assert report["status"] == "archived"
    assert (report["bets"], report["entries"]) == (2, 7)
    assert_nothing_lost_or_duplicated(cfg, original)

    conn = sqlite3.connect(cfg.server.db_path)
    try:
        assert conn.execute("SELECT * FROM accounts ORDER BY address").fetchall() == balances_before
        totals = dict(
            (a, (amount, locked, n))
            for a, amount, locked, n in conn.execute("SELECT * FROM archived_totals")
        )
        # 0xaa: +10000 deposit, −1000 stake, +3000 payout, −100 withdrawal; locked +1000 −1000
        assert totals["0xaa"] == (11_900, 0, 4)
        assert totals["0xbb"] == (10_000, 0, 1)
        assert "0xdd" not in totals
        assert conn.execute("SELECT status FROM archive_runs").fetchall() == [("deleted",)]
    finally:
        conn.close()


def test_an_archived_bets_nonce_stays_burned_forever(cfg: Config) -> None:
    """Issue 9 defect 11: once bet-1 (won) and bet-5 (rejected) left the hot database, a new,
    validly signed request reusing their nonce used to be accepted — with the archived bet's
    own deterministic bet_id. Now the archiver leaves a tombstone and the writer answers
    replayed_nonce, moving no money."""
    archive.run_archive(cfg, NOW)
    conn = connect.open_writer(cfg.server.db_path)
    try:
        assert (
            conn.execute("SELECT bet_id FROM bets WHERE bet_id IN ('bet-1', 'bet-5')").fetchall()
            == []
        )
        tombstones = conn.execute("SELECT address, nonce, bet_id FROM archived_nonces").fetchall()
        assert sorted(tombstones) == [
            ("0xaa", "nonce-000000000001", "bet-1"),
            ("0xdd", "nonce-000000000005", "bet-5"),
        ]
        apply(conn, NOW, dep("0xdd", 10_000, "d-dd-later", NOW))
        before = {a: read.get_balance(conn, a) for a in ("0xaa", "0xdd")}
        replays = [  # same address and nonce; a new cell, time and signature
            replace(bet(1, "0xaa", 1_000, NOW), signature="ef" * 64),
            replace(bet(5, "0xdd", 500, NOW), signature="ef" * 64),
            replace(bet(5, "0xdd", 500, NOW), bet_id="another-id", signature="ef" * 64),
        ]
        events = write.apply_batch(conn, replays, NOW)
        reasons = [getattr(e, "reason", None) for e in events if isinstance(e, BetRejected)]
        assert reasons == ["replayed_nonce"] * 3
        assert not any(isinstance(e, BetConfirmed) for e in events)
        assert {a: read.get_balance(conn, a) for a in ("0xaa", "0xdd")} == before
        assert read.get_bet(conn, "bet-1") is None and read.get_bet(conn, "another-id") is None
        assert integrity_check(conn) == []
        # A fresh nonce still works for the same player.
        fresh = replace(bet(9, "0xdd", 500, NOW), bet_id="bet-fresh")
        assert isinstance(write.apply_batch(conn, [fresh], NOW)[0], BetConfirmed)
    finally:
        conn.close()


def test_the_manifest_counts_and_digests_match_the_files(cfg: Config) -> None:
    report = archive.run_archive(cfg, NOW)
    run_dir = Path(report["dir"])
    manifest = archive.read_manifest(run_dir, report["manifest_sha256"])
    assert (manifest["bets"], manifest["entries"]) == (report["bets"], report["entries"])
    rows = {f["name"]: f["rows"] for f in manifest["files"]}
    assert rows == {archive.BETS_FILE: 2, archive.LEDGER_FILE: 7}
    for name in rows:
        assert len(archive.read_archive_file(run_dir, name, manifest)) == rows[name]
    assert manifest["totals"]["0xaa"]["amount"] == 11_900


def test_a_second_run_finds_nothing_more_to_archive(cfg: Config) -> None:
    archive.run_archive(cfg, NOW)
    before = hot_rows(cfg.server.db_path)
    report = archive.run_archive(cfg, NOW + 1)
    assert report["status"] == "empty"
    assert hot_rows(cfg.server.db_path) == before
    assert len(run_dirs(cfg)) == 1


def test_rows_become_archivable_once_the_blocking_bet_resolves(cfg: Config) -> None:
    """0xee's open bet-8 held back everything after its stake; once it resolved long enough
    ago, the whole history of 0xee leaves."""
    conn = connect.open_writer(cfg.server.db_path)
    apply(conn, OLD + 5, Settle(outcomes=(outcome("bet-8", "lost", OLD + 5),)))
    conn.close()
    original = hot_rows(cfg.server.db_path)

    archive.run_archive(cfg, NOW)

    arch_bets, arch_entries = archived_rows(cfg)
    assert {e["ref"] for e in arch_entries if e["address"] == "0xee"} == {"d-ee", "bet-7", "bet-8"}
    assert {"bet-7", "bet-8"} <= {b["bet_id"] for b in arch_bets}
    assert_nothing_lost_or_duplicated(cfg, original)


def test_ticks_past_retention_are_purged_but_an_open_bet_keeps_its_ticks(cfg: Config) -> None:
    report = archive.run_archive(cfg, NOW)
    conn = sqlite3.connect(cfg.server.db_path)
    try:
        left = conn.execute("SELECT symbol, ts FROM ticks ORDER BY symbol, ts").fetchall()
    finally:
        conn.close()
    assert left == [
        ("BTC-USD", NOW - 6 * DAY),
        ("BTC-USD", NEW),
        ("ETH-USD", ETH_OPEN_T - 2_000),
        ("ETH-USD", ETH_OPEN_T + 1_000),
    ]
    assert report["ticks_purged"] == 3


def test_a_verified_run_sets_the_archive_timestamp_metric(cfg: Config) -> None:
    archive.run_archive(cfg, NOW)
    value = REGISTRY.get_sample_value("tap_last_successful_archive_timestamp_seconds")
    assert value == NOW / 1000
    assert archive.last_successful_run_ms(cfg) == NOW


def test_an_inconsistent_database_is_not_archived(cfg: Config) -> None:
    conn = sqlite3.connect(cfg.server.db_path)
    conn.execute("UPDATE accounts SET available = available + 1 WHERE address = '0xaa'")
    conn.commit()
    conn.close()
    before = hot_rows(cfg.server.db_path)
    with pytest.raises(archive.ArchiveError, match="integrity check"):
        archive.run_archive(cfg, NOW)
    assert hot_rows(cfg.server.db_path) == before
    assert run_statuses(cfg) == ["failed"]


def test_a_file_that_does_not_verify_deletes_nothing(cfg: Config) -> None:
    original = hot_rows(cfg.server.db_path)

    def corrupt(step: str) -> None:
        if step == "exported":
            (bets_file,) = Path(cfg.archive.dir).glob(f"run-*/{archive.BETS_FILE}")
            data = bytearray(bets_file.read_bytes())
            data[-5] ^= 0xFF
            bets_file.write_bytes(bytes(data))

    with pytest.raises(archive.ArchiveVerificationError):
        archive.run_archive(cfg, NOW, on_step=corrupt)
    assert hot_rows(cfg.server.db_path) == original
    assert run_statuses(cfg) == ["failed"]
    assert run_dirs(cfg) == []


def test_only_one_archiver_runs_at_a_time(cfg: Config) -> None:
    def second_archiver(step: str) -> None:
        if step == "started":
            with pytest.raises(archive.ArchiverBusy):
                archive.run_archive(cfg, NOW)

    archive.run_archive(cfg, NOW, on_step=second_archiver)
    assert run_statuses(cfg) == ["deleted"]


# ── killed and run again ─────────────────────────────────────────────────────────────────────

STEPS = [
    "recovered",
    "started",
    f"exported:{archive.BETS_FILE}",
    f"exported:{archive.LEDGER_FILE}",
    "exported",
    "verified",
    "deleting",  # inside the delete transaction, before COMMIT
    "deleted",
    "purging",
]


class Killed(BaseException):
    """Stands for SIGKILL: not an `Exception`, so no handler of the archiver runs."""


def kill_at(target: str) -> Any:
    def step(name: str) -> None:
        if name == target:
            raise Killed(name)

    return step


@pytest.mark.parametrize("step", STEPS)
def test_a_run_killed_at_any_step_then_rerun_loses_and_duplicates_nothing(
    cfg: Config, step: str
) -> None:
    original = hot_rows(cfg.server.db_path)
    with pytest.raises(Killed):
        archive.run_archive(cfg, NOW, on_step=kill_at(step))
    assert_nothing_lost_or_duplicated(cfg, original)

    report = archive.run_archive(cfg, NOW)

    assert_nothing_lost_or_duplicated(cfg, original)
    arch_bets, arch_entries = archived_rows(cfg)
    assert {b["bet_id"] for b in arch_bets} == EXPECTED_BETS
    assert {(e["address"], e["kind"], e["ref"]) for e in arch_entries} == EXPECTED_ENTRIES
    statuses = run_statuses(cfg)
    if step == "recovered":  # killed before its run row existed
        assert statuses == ["deleted"]
    elif step in ("deleted", "purging"):  # the first run had committed: the rerun finds nothing
        assert statuses == ["deleted", "deleted"]
        assert report["status"] == "empty"
    else:  # the first run was discarded, its files with it
        assert statuses == ["failed", "deleted"]
        assert report["recovered_runs"] == [1]
    assert len(run_dirs(cfg)) == 1
    conn = sqlite3.connect(cfg.server.db_path)
    try:
        assert conn.execute("SELECT count(*) FROM ticks").fetchone()[0] == 4
    finally:
        conn.close()


DRIVER = """
import os, random, signal, sys
from tap.config import load_config
from tap.store import archive, connect, read, write

how, where = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if how == "step":
    on_step = lambda name: die() if name == where else None
else:  # kill inside SQLite, after a random number of VM progress callbacks
    countdown = [int(where)]
    opened = connect.open_connection

    def open_connection(*args, **kwargs):
        conn = opened(*args, **kwargs)

        def progress():
            countdown[0] -= 1
            if countdown[0] == 0:
                die()
            return 0

        conn.set_progress_handler(progress, int(sys.argv[4]))
        return conn

    connect.open_connection = open_connection
    on_step = None
archive.run_archive(load_config(), int(sys.argv[3]), on_step=on_step)
"""


def sigkilled(tmp_path: Path, how: str, where: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, how, where, str(NOW), str(PROGRESS_EVERY)],
        env={**os.environ, **environment(tmp_path), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )


PROGRESS_EVERY = 20  # SQLite VM instructions between progress callbacks


@pytest.fixture(scope="module")
def progress_total(tmp_path_factory: pytest.TempPathFactory) -> int:
    """How many progress callbacks a whole run makes on `build()`'s database (the same count
    in the subprocess: same file, same code), so kills can be spread over the entire run."""
    path = tmp_path_factory.mktemp("count")
    build(path / "tap.db")
    count = [0]
    opened = connect.open_connection

    def counting(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = opened(*args, **kwargs)

        def tick() -> int:
            count[0] += 1
            return 0

        conn.set_progress_handler(tick, PROGRESS_EVERY)
        return conn

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(connect, "open_connection", counting)
        archive.run_archive(config(path), NOW)
    return count[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "where"),
    [
        ("step", f"exported:{archive.BETS_FILE}"),
        ("step", "verified"),
        ("step", "deleting"),
        ("step", "purging"),
        ("progress", "0.05"),
        ("progress", "0.3"),
        ("progress", "0.55"),
        ("progress", "0.8"),
        ("progress", "0.9"),
        ("progress", "0.97"),
    ],
)
def test_a_sigkilled_archive_process_is_recovered_by_the_next_run(
    tmp_path: Path, how: str, where: str, progress_total: int
) -> None:
    """Real SIGKILLs: at named steps, and at points spread over the run inside SQLite (every
    PROGRESS_EVERY VM instructions is a candidate: mid-statement, mid-transaction)."""
    if how == "progress":
        where = str(max(1, int(progress_total * float(where))))
    build(tmp_path / "tap.db")
    cfg = config(tmp_path)
    original = hot_rows(cfg.server.db_path)

    killed = sigkilled(tmp_path, how, where)

    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert_nothing_lost_or_duplicated(cfg, original)
    rerun = subprocess.run(
        [sys.executable, "-m", "tap.runtime.cli", "archive"],
        env={**os.environ, **environment(tmp_path), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert b'"run_id"' in rerun.stdout
    assert_nothing_lost_or_duplicated(cfg, original)
    assert run_statuses(cfg)[-1] == "deleted"


# ── any history ──────────────────────────────────────────────────────────────────────────────

ADDRESSES = ("0xa1", "0xa2")


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, list[WriterRequest]]]:
    """Batches at non-decreasing times straddling the cutoff: deposits, withdrawals, bets
    placed and (sometimes) settled, in any interleaving across a few addresses."""
    at = OLD
    funded: list[WriterRequest] = [dep(a, 20_000, f"seed-{a}", at) for a in ADDRESSES]
    batches: list[tuple[int, list[WriterRequest]]] = [(at, funded)]
    open_bets: list[str] = []
    n = 0
    for _ in range(draw(st.integers(1, 12))):
        at += draw(st.sampled_from([1, 1, 1, 20 * DAY]))
        requests: list[WriterRequest] = []
        for _ in range(draw(st.integers(1, 4))):
            address = draw(st.sampled_from(ADDRESSES))
            kind = draw(st.sampled_from(["deposit", "bet", "bet", "settle", "withdraw"]))
            n += 1
            if kind == "deposit":
                requests.append(dep(address, draw(st.integers(1, 5_000)), f"d{n}", at))
            elif kind == "withdraw":
                requests.append(
                    Withdrawal(
                        address=address,
                        amount=draw(st.integers(1, 3_000)),
                        nonce=f"w{n}",
                        ref=f"w{n}",
                        at=at,
                    )
                )
            elif kind == "bet":
                requests.append(bet(n, address, draw(st.integers(1, 3_000)), at))
                open_bets.append(f"bet-{n}")
            elif open_bets:
                bet_id = open_bets.pop(draw(st.integers(0, len(open_bets) - 1)))
                status = draw(st.sampled_from(["won", "lost", "void"]))
                requests.append(Settle(outcomes=(outcome(bet_id, status, at),)))
        batches.append((at, requests))
    return batches


@given(histories(), st.integers(0, 80))
def test_any_history_archives_to_prefixes_and_keeps_integrity(
    history: list[tuple[int, list[WriterRequest]]], days_later: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        conn = connect.open_writer(path / "tap.db", synchronous="OFF")
        try:
            for at, requests in history:
                write.apply_batch(conn, requests, at)
        finally:
            conn.close()
        cfg = config(path)
        original = hot_rows(cfg.server.db_path)
        now = OLD + days_later * DAY

        archive.run_archive(cfg, now)

        assert_nothing_lost_or_duplicated(cfg, original)
        cutoff = now - cfg.archive.after_days * DAY
        arch_bets, arch_entries = archived_rows(cfg)
        for b in arch_bets:
            assert b["status"] in ("won", "lost", "void", "rejected")
            assert (b["resolved_at"] or b["accepted_at"]) < cutoff
        assert all(e["at"] < cutoff for e in arch_entries)
        _, hot_entries = hot_rows(cfg.server.db_path)
        for address in ADDRESSES:
            gone = [e["entry_id"] for e in arch_entries if e["address"] == address]
            kept = [i for i, e in hot_entries.items() if e["address"] == address]
            assert not gone or not kept or max(gone) < min(kept), "not a prefix"


def test_tap_archive_exits_1_and_deletes_nothing_on_an_inconsistent_database(
    tmp_path: Path, cfg: Config
) -> None:
    conn = sqlite3.connect(cfg.server.db_path)
    conn.execute("DELETE FROM ledger WHERE ref = 'w1'")
    conn.commit()
    conn.close()
    before = hot_rows(cfg.server.db_path)
    done = subprocess.run(
        [sys.executable, "-m", "tap.runtime.cli", "archive"],
        env={**os.environ, **environment(tmp_path), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "archive failed: the database fails the integrity check" in done.stderr
    assert hot_rows(cfg.server.db_path) == before
