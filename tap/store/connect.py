"""Connections to the ledger database: how a file is opened, created, migrated and waited for,
and how a busy lock is told apart from a real error.

Every SQLite connection in tap is opened here, so every one gets the same settings: autocommit
(transactions are explicit), WAL (readers read while the writer writes), foreign keys on, and
`synchronous=FULL` unless a throw-away database asks for less. `open_writer` also creates and
migrates the file (`tap.store.schema`); a process that only reads waits for that
(`wait_for_schema`). No statement about bets or money lives here: the writer's transaction is
`tap.store.write`, the reads are `tap.store.read`.

What the caller decides: where the file lives, which thread uses a connection (one at a time),
and what to do about SQLITE_BUSY: `is_busy` tells it apart from a real error, `while_busy`
retries a one-off statement briefly (startup only; the writer has its own retry budget).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tap.store.schema import LATEST, migrate, schema_version

T = TypeVar("T")


def open_connection(
    path: str | Path,
    *,
    busy_timeout_ms: int = 50,
    read_only: bool = False,
    synchronous: str = "FULL",
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, foreign keys on.

    `synchronous=FULL` is what makes a confirmation mean "fsync'd": in WAL mode NORMAL may lose
    the last commits on power loss. Lower it only for throw-away databases. `busy_timeout_ms` is
    how long SQLite itself waits for a lock before raising SQLITE_BUSY to the caller, who retries
    with backoff; keep it short so a stuck lock shows up as retries in the metrics.

    `check_same_thread=False`: a connection may be used from another thread than the one that
    opened it (trio's worker threads, one call at a time); the caller guarantees the
    one-at-a-time part. The batcher's writer opens and uses its connection on its own thread.
    """
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF/NORMAL/FULL/EXTRA, got {synchronous!r}")
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, cached_statements=256
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    if read_only:
        conn.execute("PRAGMA query_only = ON")
    else:
        # Switching a fresh file to WAL needs a moment of exclusive access: another process
        # opening the same new file at the same instant makes it busy, so retry briefly.
        mode = while_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            conn.close()
            raise sqlite3.OperationalError(f"{path}: could not switch to WAL (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_writer(
    path: str | Path, *, busy_timeout_ms: int = 50, synchronous: str = "FULL"
) -> sqlite3.Connection:
    """The writer's connection: creates the file and its directory if needed, then migrates."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = open_connection(path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)
    # 64 MiB of page cache (default 2 MiB): the unique indexes on random ids (bet_id, nonce)
    # touch pages all over a large file; keeping them in memory keeps each batch CPU-bound.
    conn.execute("PRAGMA cache_size = -65536")
    try:
        while_busy(lambda: migrate(conn))  # two processes may start on one file at once
    except BaseException:
        conn.close()
        raise
    return conn


def wait_for_schema(path: str | Path, within_s: float = 60.0) -> None:
    """Wait until the file at `path` exists at this code's schema (an edge: the core creates
    and migrates it; the edge only reads). Raises `TimeoutError` after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        if Path(path).exists():
            conn = open_connection(path, read_only=True)
            try:
                if schema_version(conn) >= LATEST:
                    return
            except sqlite3.OperationalError as e:
                if not is_busy(e):
                    raise
            finally:
                conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no database at schema {LATEST} (is the core running?)")
        time.sleep(0.1)


def while_busy(fn: Callable[[], T], within_s: float = 10.0) -> T:
    """Run a one-off statement that may meet another process's lock (startup only)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not is_busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def migrate_path(path: str | Path) -> int:
    """Bring the file at `path` to the latest schema (`tap migrate`); returns the version."""
    conn = open_writer(path)
    try:
        return schema_version(conn)
    finally:
        conn.close()


def is_busy(exc: BaseException) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED (and their extended codes): someone else holds the
    lock, the same work will succeed later. Every other error is a real one."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
