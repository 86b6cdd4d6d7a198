"""Backups and restores of the ledger database, and the lock files that keep them safe.

It decides how a backup is taken (SQLite's online backup API, so the writer keeps writing), how
it is checked (`PRAGMA integrity_check` on the copy), how many are kept, and when a restore is
refused: a backup that fails SQLite's or the ledger's integrity check, or a database that is in
use. It leaves to its caller when to take backups (`actors/maintenance.py`, cron, an operator)
and where the clock comes from (`now_ms` names the file).

The locks are `flock(2)` locks on small files next to the database. The kernel drops them when
their holder dies, however it dies, so a crashed server never leaves a stale lock behind:

- `ServerLock(db_path)`: exclusive on `<db>.pid` (e.g. `data/tap.pid`), held by the supervisor
  for as long as it serves. A second server on the same file fails fast; `restore` refuses.
- `DatabaseUse(db_path)`: shared on `<db>.use.lock`, held by every maintenance job that opens
  the file (backup, archive). `restore` takes it exclusively: replacing a SQLite file while any
  connection has it (and its `-wal`/`-shm`) open would let the old and the new file share one
  WAL index, which corrupts the new one.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from types import TracebackType

from tap.config import Config
from tap.store import connect
from tap.store.integrity import integrity_check
from tap.store.schema import LATEST, schema_version

log = logging.getLogger("tap.backup")

# ── lock files ───────────────────────────────────────────────────────────────────────────────


class LockHeld(RuntimeError):
    """Someone else holds the lock; `holder` is the pid they wrote into it, when known."""

    def __init__(self, path: Path, holder: int | None) -> None:
        who = f"pid {holder}" if holder is not None else "another process"
        super().__init__(f"{path} is held by {who}")
        self.path = path
        self.holder = holder


class ServerRunning(LockHeld):
    """A server is serving this database."""


class FileLock:
    """A non-blocking `flock` on `path`, as a context manager; raises `LockHeld` if taken.

    Exclusive by default; `shared=True` lets any number of shared holders in together while
    keeping every exclusive holder out (and the other way round). A lock belongs to the open
    file, not the process, so two `FileLock`s on one path conflict even within one process
    (two threads of the server, say). Exclusive holders write their pid into the file for the
    error message; the file itself is never deleted (deleting a lock file races with its next
    opener).
    """

    error: type[LockHeld] = LockHeld

    def __init__(self, path: str | Path, *, shared: bool = False) -> None:
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self.error(self.path, _read_pid(self.path)) from None
            raise
        if not self.shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            if not self.shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def server_lock_path(db_path: str | Path) -> Path:
    return Path(db_path).with_suffix(".pid")


def use_lock_path(db_path: str | Path) -> Path:
    p = Path(db_path)
    return p.with_name(p.name + ".use.lock")


class ServerLock(FileLock):
    """Held by the supervisor while it serves `db_path`: `with ServerLock(cfg.server.db_path):`
    around the nursery. Raises `ServerRunning` when a server already holds it."""

    error = ServerRunning

    def __init__(self, db_path: str | Path, *, shared: bool = False) -> None:
        """Servers hold it `shared=True`: several tap processes may serve one database file
        (SQLite serializes their writers), while `restore` — which takes it exclusively — is
        kept out as long as any of them runs."""
        super().__init__(server_lock_path(db_path), shared=shared)


class DatabaseUse(FileLock):
    """Held (shared) by maintenance jobs while they have the database open; `restore` takes
    it exclusively."""

    def __init__(self, db_path: str | Path, *, exclusive: bool = False) -> None:
        super().__init__(use_lock_path(db_path), shared=not exclusive)


def server_running(db_path: str | Path) -> int | None:
    """The pid of the server holding `db_path`'s lock (0 if unknown), None if none does.

    A snapshot for messages; code that must keep a server out holds `ServerLock` itself."""
    try:
        with ServerLock(db_path):
            return None
    except ServerRunning as e:
        return e.holder if e.holder is not None else 0


# ── files ────────────────────────────────────────────────────────────────────────────────────


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the directory entry is data too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sqlite_ok(conn: sqlite3.Connection) -> list[str]:
    """`PRAGMA integrity_check`'s findings; [] when it says "ok"."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    return [] if rows == ["ok"] else rows


# ── backup ───────────────────────────────────────────────────────────────────────────────────


class BackupError(RuntimeError):
    """The backup was not written (nothing half-done is left under the final name)."""


_NAME = re.compile(r"^tap-(\d{8}T\d{6})\.(\d{3})Z(?:-(\d+))?\.db$")
BACKUP_LOCK = ".backup.lock"


def backup_name(now_ms: int, n: int = 0) -> str:
    """`tap-20241122T154000.000Z.db`: UTC, sortable, one per millisecond (`-n` on a clash)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ms // 1000))
    return f"tap-{stamp}.{now_ms % 1000:03d}Z{f'-{n}' if n else ''}.db"


def _parse_name(name: str) -> tuple[int, int] | None:
    m = _NAME.match(name)
    if m is None:
        return None
    seconds = calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%S"))
    return seconds * 1000 + int(m.group(2)), int(m.group(3) or 0)


def list_backups(backup_dir: str | Path) -> list[Path]:
    """The backups in `backup_dir`, oldest first (by the time in their name)."""
    d = Path(backup_dir)
    if not d.is_dir():
        return []
    named = [(key, p) for p in d.iterdir() if (key := _parse_name(p.name)) is not None]
    return [p for _, p in sorted(named)]


def newest_backup_ms(cfg: Config) -> int | None:
    """When the newest backup in `archive.backup_dir` was taken (from its name)."""
    backups = list_backups(cfg.archive.backup_dir)
    if not backups:
        return None
    parsed = _parse_name(backups[-1].name)
    return None if parsed is None else parsed[0]


def _copy_database(source: sqlite3.Connection, dest: Path) -> None:
    """Copy with the online backup API into a fresh file `dest`, in rollback-journal mode so the
    copy is one self-contained file, then check it with `PRAGMA integrity_check`."""
    target = sqlite3.connect(str(dest), isolation_level=None)
    try:
        # pages=-1: one step. In WAL mode the source's read snapshot does not block the writer,
        # and a stepwise copy would restart every time the writer commits.
        source.backup(target, pages=-1)
        target.execute("PRAGMA journal_mode = DELETE")
        problems = _sqlite_ok(target)
        if problems:
            raise BackupError(f"the copy fails PRAGMA integrity_check: {problems[:3]}")
    finally:
        target.close()
    fsync_file(dest)


def backup_now(cfg: Config, to: str | None = None, *, now_ms: int | None = None) -> Path:
    """Write a consistent copy of the database and return its path.

    `to=None`: into `archive.backup_dir` as `backup_name(now_ms)`, then delete all but the
    newest `archive.backup_keep` backups there (at least one is always kept). With `to`: exactly
    that file (replaced atomically if it exists), no retention. The copy is written under a
    temporary name, checked, fsync'd and renamed, so a crash or a kill never leaves a partial
    file under a backup's name. Safe while the server runs (WAL: the writer is not blocked).
    """
    source_path = Path(cfg.server.db_path)
    if not source_path.is_file():
        raise BackupError(f"no database at {source_path}")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    with contextlib.ExitStack() as stack:
        stack.enter_context(DatabaseUse(source_path))
        if to is not None:
            dest = Path(to)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.resolve() == source_path.resolve():
                raise BackupError(f"refusing to back up {source_path} onto itself")
        else:
            folder = Path(cfg.archive.backup_dir)
            folder.mkdir(parents=True, exist_ok=True)
            stack.enter_context(FileLock(folder / BACKUP_LOCK))
            for stale in folder.glob(".tap-*.partial"):  # left by a killed backup
                stale.unlink(missing_ok=True)
            n = 0
            while (dest := folder / backup_name(now, n)).exists():
                n += 1
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        source = connect.open_connection(source_path, read_only=True)
        try:
            _copy_database(source, partial)
            os.replace(partial, dest)
            fsync_dir(dest.parent)
        finally:
            source.close()
            partial.unlink(missing_ok=True)
        if to is None:
            _prune(dest.parent, max(1, cfg.archive.backup_keep))
    log.info("backup written: %s", dest)
    return dest


def _prune(folder: Path, keep: int) -> list[Path]:
    backups = list_backups(folder)
    doomed = backups[:-keep]
    for old in doomed:
        old.unlink(missing_ok=True)
    if doomed:
        fsync_dir(folder)
    return doomed


# ── restore ──────────────────────────────────────────────────────────────────────────────────


class RestoreError(RuntimeError):
    """The restore was refused; the database in place was not touched."""


def _checkpoint_quietly(path: Path) -> None:
    """Fold the old database's WAL into it and remove the WAL (best effort: it may be the
    broken file the restore replaces), so no stale WAL can be replayed onto the new file."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error as e:
        log.warning("restore: could not checkpoint the old database %s: %s", path, e)


def _verify_restorable(candidate: Path) -> None:
    conn = sqlite3.connect(str(candidate), isolation_level=None)
    try:
        problems = _sqlite_ok(conn)
        if problems:
            raise RestoreError(f"the backup fails PRAGMA integrity_check: {problems[:3]}")
        version = schema_version(conn)
        if version == 0:
            raise RestoreError("the backup is not a tap database (no schema_version)")
        if version > LATEST:
            raise RestoreError(f"the backup is at schema {version}, this code knows {LATEST}")
        violations = integrity_check(conn)
        if violations:
            shown = "; ".join(violations[:5])
            raise RestoreError(
                f"the backup fails the ledger integrity check ({len(violations)}): {shown}"
            )
    except sqlite3.DatabaseError as e:
        raise RestoreError(f"the backup is not a readable SQLite database: {e}") from e
    finally:
        conn.close()


def restore(cfg: Config, path: str | Path, *, now_ms: int | None = None) -> Path | None:
    """Put the backup at `path` in place of `server.db_path`; return where the replaced
    database was kept (`<db>.replaced-<time>`), or None if there was none.

    Refused (`RestoreError`, nothing touched) when the server or a maintenance job is using the
    database, or when the backup fails `PRAGMA integrity_check`, is not a tap database of a
    schema this code knows, or fails the ledger integrity check. The backup is first copied
    (backup API) to a temporary file beside the database and every check runs on that copy —
    what is checked is exactly what goes into place. Then: the old database's WAL is folded in,
    the old file is kept under a new name (hard link), any leftover `-wal`/`-shm` is moved aside
    with it, and the copy is renamed over the database (atomic) and the directory fsync'd. The
    locks stay held throughout, so no server can start on a half-restored file.
    """
    source = Path(path)
    target = Path(cfg.server.db_path)
    if not source.is_file():
        raise RestoreError(f"no backup at {source}")
    if target.exists() and source.resolve() == target.resolve():
        raise RestoreError(f"{source} is the database itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = ServerLock(target)
        use = DatabaseUse(target, exclusive=True)
        with server, use:
            return _restore_locked(source, target, now_ms)
    except ServerRunning as e:
        raise RestoreError(f"the server is running on {target} ({e}); stop it first") from None
    except LockHeld as e:
        raise RestoreError(f"a backup or archive run is using {target} ({e})") from None


def _restore_locked(source: Path, target: Path, now_ms: int | None) -> Path | None:
    candidate = target.with_name(f".{target.name}.restore-{os.getpid()}.partial")
    candidate.unlink(missing_ok=True)
    try:
        try:
            src = sqlite3.connect(str(source), isolation_level=None)
            try:
                src.execute("PRAGMA query_only = ON")
                _copy_database(src, candidate)
            finally:
                src.close()
        except BackupError as e:
            raise RestoreError(str(e)) from e
        except sqlite3.DatabaseError as e:
            raise RestoreError(f"the backup is not a readable SQLite database: {e}") from e
        _verify_restorable(candidate)

        kept: Path | None = None
        if target.exists():
            _checkpoint_quietly(target)
            now = now_ms if now_ms is not None else int(time.time() * 1000)
            kept = target.with_name(f"{target.name}.replaced-{now}")
            try:
                os.link(target, kept)
            except OSError:  # a file system without hard links: copy instead
                conn = sqlite3.connect(str(target), isolation_level=None)
                try:
                    _copy_database(conn, kept)
                finally:
                    conn.close()
        for suffix in ("-wal", "-shm"):
            leftover = target.with_name(target.name + suffix)
            if leftover.exists():
                if kept is not None and suffix == "-wal":
                    os.replace(leftover, kept.with_name(kept.name + suffix))
                else:
                    leftover.unlink()
        os.replace(candidate, target)
        fsync_dir(target.parent)
    finally:
        candidate.unlink(missing_ok=True)
    log.info("restored %s into %s (previous database kept at %s)", source, target, kept)
    return kept
