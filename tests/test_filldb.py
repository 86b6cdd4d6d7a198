"""`python -m loadgen.benches.filldb` makes the restore drill's database: consistent, and as large
as asked.

The drill in OPERATIONS.md times `tap backup` and `tap restore` on a 1-million-row ledger built
by this tool; a restore verifies the ledger first, so a filled database that failed the
integrity check would measure a refusal, not a restore.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from loadgen.benches.filldb import fill
from tap.store.integrity import integrity_check

NOW = 1_796_000_000_000


def test_a_filled_database_has_the_rows_asked_and_passes_the_integrity_check(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tap.db"
    counts = fill(path, entries=3_001, accounts=50, tick_days=0.01, tick_ms=250, now_ms=NOW)
    assert counts["accounts"] == 50
    assert counts["ledger"] == 3_001 - 1  # 50 deposits + 1,475 bets × (stake + payout)
    assert counts["bets"] == (3_001 - 50) // 2
    assert counts["ticks"] == 0.01 * 86_400_000 // 250
    conn = sqlite3.connect(path)
    try:
        assert integrity_check(conn) == []
        statuses = dict(conn.execute("SELECT status, count(*) FROM bets GROUP BY status"))
    finally:
        conn.close()
    assert set(statuses) == {"won", "lost"}


def test_filldb_refuses_to_touch_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "tap.db"
    path.write_bytes(b"")
    with pytest.raises(FileExistsError):
        fill(path, entries=100, accounts=10, tick_days=0, tick_ms=250, now_ms=NOW)
