"""Backups and restores: a backup restores to a database `tap check` accepts; a restore is
refused while the server runs, and for a backup that is corrupt or fails the ledger check."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tap.config import Config, load_config
from tap.messages import DecidedBy, Deposit, Outcome, PlaceBet, Settle
from tap.store import backup, connect, read, write
from tap.store.integrity import integrity_check
from tests.builders import placed_bet

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_732_290_000_000


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        "TAP__SERVER__DB_PATH": str(tmp_path / "data" / "tap.db"),
        "TAP__ARCHIVE__DIR": str(tmp_path / "archive"),
        "TAP__ARCHIVE__BACKUP_DIR": str(tmp_path / "backups"),
        "TAP__ARCHIVE__BACKUP_KEEP": "3",
    }


def tap(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process, pointed at `tmp_path` by the environment."""
    return subprocess.run(
        [sys.executable, "-m", "tap.runtime.cli", *args],
        env={**os.environ, **environment(tmp_path), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def place(n: int, address: str, amount: int) -> PlaceBet:
    return placed_bet(n, address, amount)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """A database with money in every state: deposits, an open bet, a won and a lost one."""
    cfg = load_config(environ=environment(tmp_path))
    conn = connect.open_writer(cfg.server.db_path)
    try:
        write.apply_batch(
            conn,
            [
                Deposit(address="0xaa", amount=10_000, ref="d1", at=NOW),
                place(1, "0xaa", 1_000),
                place(2, "0xaa", 2_000),
                place(3, "0xaa", 3_000),
            ],
            NOW,
        )
        won = Outcome(
            bet_id="bet-1",
            address="0xaa",
            status="won",
            amount=1_000,
            payout=3_000,
            decided_by=DecidedBy(ts=NOW, price=1_500),
            reason="touch",
            at=NOW,
        )
        lost = Outcome(
            bet_id="bet-2",
            address="0xaa",
            status="lost",
            amount=2_000,
            payout=0,
            decided_by=DecidedBy(ts=NOW + 5_000, price=9),
            reason="column_end",
            at=NOW + 5_000,
        )
        write.apply_batch(conn, [Settle(outcomes=(won, lost))], NOW + 5_000)
    finally:
        conn.close()
    return cfg


def balance(cfg: Config) -> tuple[int, int]:
    conn = connect.open_connection(cfg.server.db_path, read_only=True)
    try:
        account = read.get_balance(conn, "0xaa")
        return account.available, account.locked
    finally:
        conn.close()


def deposit_more(cfg: Config, amount: int, ref: str) -> None:
    conn = connect.open_writer(cfg.server.db_path)
    try:
        write.apply_batch(conn, [Deposit(address="0xaa", amount=amount, ref=ref, at=NOW)], NOW + 9)
    finally:
        conn.close()


def test_backup_then_restore_brings_back_that_state_and_tap_check_passes(
    tmp_path: Path, cfg: Config
) -> None:
    backed_up = balance(cfg)
    made = tap(tmp_path, "backup")
    assert made.returncode == 0, made.stderr
    path = made.stdout.strip().removeprefix("backup written: ")
    assert Path(path).parent == Path(cfg.archive.backup_dir)
    deposit_more(cfg, 777, "after-the-backup")
    assert balance(cfg) != backed_up

    restored = tap(tmp_path, "restore", path)

    assert restored.returncode == 0, restored.stderr
    assert balance(cfg) == backed_up
    checked = tap(tmp_path, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "integrity: OK" in checked.stdout
    kept = list(Path(cfg.server.db_path).parent.glob("tap.db.replaced-*"))
    assert len(kept) == 1, "the replaced database is kept beside the new one"


def test_the_backup_copy_is_one_self_contained_file(cfg: Config) -> None:
    path = backup.backup_now(cfg, None, now_ms=NOW)
    assert not path.with_name(path.name + "-wal").exists()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert integrity_check(conn) == []
    finally:
        conn.close()


def test_restore_is_refused_while_the_server_holds_its_lock(tmp_path: Path, cfg: Config) -> None:
    path = backup.backup_now(cfg, None, now_ms=NOW)
    deposit_more(cfg, 5, "live")
    live = balance(cfg)

    with backup.ServerLock(cfg.server.db_path):
        refused = tap(tmp_path, "restore", str(path))
        with pytest.raises(backup.RestoreError, match="server is running"):
            backup.restore(cfg, path)
        assert backup.server_running(cfg.server.db_path) == os.getpid()

    assert refused.returncode == 1
    assert "server is running" in refused.stderr
    assert f"pid {os.getpid()}" in refused.stderr
    assert balance(cfg) == live
    assert backup.server_running(cfg.server.db_path) is None
    backup.restore(cfg, path)  # the lock died with its holder: now it goes through
    assert balance(cfg) != live


def test_a_second_server_on_the_same_database_is_refused(cfg: Config) -> None:
    db_path = cfg.server.db_path
    with (
        backup.ServerLock(db_path),
        pytest.raises(backup.ServerRunning),
        backup.ServerLock(db_path),
    ):
        pass


def test_restore_is_refused_while_a_backup_or_archive_has_the_database_open(cfg: Config) -> None:
    path = backup.backup_now(cfg, None, now_ms=NOW)
    with backup.DatabaseUse(cfg.server.db_path), pytest.raises(backup.RestoreError, match="using"):
        backup.restore(cfg, path)


def test_a_corrupted_backup_is_refused_and_nothing_is_touched(cfg: Config) -> None:
    path = backup.backup_now(cfg, None, now_ms=NOW)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    for at in range(page, len(data), page):  # scribble over every b-tree page's header
        data[at : at + 64] = b"\xab" * 64
    path.write_bytes(bytes(data))
    before = Path(cfg.server.db_path).read_bytes()

    with pytest.raises(backup.RestoreError) as refused:
        backup.restore(cfg, path)

    assert "integrity_check" in str(refused.value) or "malformed" in str(refused.value)
    assert Path(cfg.server.db_path).read_bytes() == before
    leftovers = [p.name for p in Path(cfg.server.db_path).parent.iterdir()]
    assert not any("partial" in n or "replaced" in n for n in leftovers), leftovers


def test_a_backup_that_fails_the_ledger_check_is_refused(tmp_path: Path, cfg: Config) -> None:
    conn = sqlite3.connect(cfg.server.db_path)
    conn.execute("UPDATE accounts SET available = available + 1 WHERE address = '0xaa'")
    conn.commit()
    conn.close()
    bad = backup.backup_now(cfg, str(tmp_path / "bad.db"), now_ms=NOW)
    conn = sqlite3.connect(cfg.server.db_path)
    conn.execute("UPDATE accounts SET available = available - 1 WHERE address = '0xaa'")
    conn.commit()
    conn.close()

    refused = tap(tmp_path, "restore", str(bad))

    assert refused.returncode == 1
    assert "ledger integrity check" in refused.stderr
    assert "account 0xaa" in refused.stderr


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path, cfg: Config) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(backup.RestoreError, match="not a readable SQLite database"):
        backup.restore(cfg, junk)


def test_only_the_newest_backups_are_kept(cfg: Config) -> None:
    made = [backup.backup_now(cfg, None, now_ms=NOW + i * 3_600_000) for i in range(5)]
    assert backup.list_backups(cfg.archive.backup_dir) == made[-3:]
    assert backup.newest_backup_ms(cfg) == NOW + 4 * 3_600_000


def test_two_backups_in_one_millisecond_get_distinct_names(cfg: Config) -> None:
    first = backup.backup_now(cfg, None, now_ms=NOW)
    second = backup.backup_now(cfg, None, now_ms=NOW)
    assert first != second
    assert backup.list_backups(cfg.archive.backup_dir) == [first, second]


def test_a_partial_file_left_by_a_killed_backup_is_cleaned_up(cfg: Config) -> None:
    folder = Path(cfg.archive.backup_dir)
    folder.mkdir(parents=True)
    stale = folder / f".{backup.backup_name(NOW)}.4242.partial"
    stale.write_bytes(b"half a database")
    backup.backup_now(cfg, None, now_ms=NOW + 1)
    assert not stale.exists()
    assert len(backup.list_backups(folder)) == 1


def test_a_backup_onto_the_database_itself_is_refused(cfg: Config) -> None:
    with pytest.raises(backup.BackupError, match="onto itself"):
        backup.backup_now(cfg, cfg.server.db_path)
