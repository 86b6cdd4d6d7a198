"""The archiver (DESIGN rule 12): old resolved bets and their ledger rows move from the hot
database into verified, compressed files; ticks past retention are purged.

It decides *what* may leave the hot database and *in which order* things happen so that a kill
at any instant loses and duplicates nothing. It leaves to its caller when to run (the weekly
actor in `actors/maintenance.py`, `POST /admin/archive`, `tap archive`) and which thread runs it
(it blocks: call it from a worker thread).

What may leave, under the integrity check's rules (`tap/store/integrity.py`):

- A resolved bet (won, lost, void) leaves together with *all* its ledger rows (stake + payout or
  refund), and only when those rows are part of the address's archivable prefix.
- An address's ledger rows leave only as a *prefix* in `entry_id` order — the oldest rows, up to
  (not including) the first row that must stay: a row newer than the cutoff, a row of a bet that
  is not resolved before the cutoff, or a row of a bet some of whose rows lie past the prefix.
  Their sums are added to `archived_totals` in the same transaction, so for every account
  Σ(rows kept) + archived == balance and the first kept row's `balance_after` still follows.
- A rejected bet (no ledger rows) leaves when it was accepted before the cutoff.
- Accounts, withdrawals and adjustments records stay. Bets are kept forever: in the hot
  database or in an archive file.

A run, and why a kill at any point is harmless. The database is the single source of truth for
a run's state (`archive_runs.status`); the files are written into a directory named after the
run (`run-<run_id>-<started_at>`), never reused:

    started    run row inserted; the plan (which rows) is read from one snapshot
    exported   bets.jsonl.gz + ledger.jsonl.gz + manifest.json written and fsync'd
    verified   every file re-read: sha256 as in the manifest, every record equal to the plan
    deleted    ONE transaction: delete exactly those rows (`DELETE … RETURNING` must give back
               records equal to the plan), add the sums to archived_totals, status = 'deleted'
    failed     an error, or a run found interrupted by the next run

Rows leave the hot database only in the `deleted` transaction, which also records that the run
is complete, so a kill before its COMMIT leaves every row in place, and one after it leaves a
complete, verified archive. A run found in `started`/`exported`/`verified` was interrupted before
that commit: the next run deletes its directory (only garbage: none of its rows were removed)
and marks it `failed`, then starts afresh. Nothing is ever half-deleted, so nothing is lost or
duplicated. Only one archiver runs at a time (`flock` on `<archive.dir>/.archiver.lock`; a
second one gets `ArchiverBusy`); the lock dies with its holder, so a killed run never blocks
the next.

Ticks older than `archive.tick_retention_days` are purged after the archive commit, in small
transactions (idempotent: re-running purges the rest), except those an unresolved bet may still
need (from the tick before the earliest open window on).

The single-writer rule, and the exception to it. While the server runs, the batcher is the
only writer of bets and ledger — except for this job. It runs from a worker thread with its own
connection (the weekly actor, `POST /admin/archive`) or from another process (`tap archive`),
and takes the write lock with `BEGIN IMMEDIATE` plus busy retry, as the batcher does; SQLite
serializes the two. The delete transaction holds the lock for as long as it takes to delete the
run's rows, during which the batcher retries and, past its retry budget, answers `overloaded`
(nothing is lost: the client retries with the same nonce). For a weekly job that is acceptable;
everything slow (reading, compressing, fsync, verifying) happens before the lock is taken.

After a restore from a backup older than an archive run, the rows that run archived are in the
hot database again, and the next run archives them again into a new directory: the same
`bet_id`/`entry_id` then appears in two runs' files, with identical content.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from tap import ledger
from tap.config import Config
from tap.runtime import metrics
from tap.store import connect, read
from tap.store.backup import DatabaseUse, FileLock, LockHeld, fsync_dir
from tap.store.integrity import BET_KINDS, integrity_check
from tap.store.schema import LATEST, schema_version

log = logging.getLogger("tap.archive")

FORMAT = 1  # manifest "format": bump when a file's layout changes
BETS_FILE = "bets.jsonl.gz"
LEDGER_FILE = "ledger.jsonl.gz"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".archiver.lock"
DAY_MS = 86_400_000
# SQLite waits this long for the write lock before reporting busy; the job then backs off and
# retries: it is a background job and can afford to wait where the batcher cannot.
BUSY_TIMEOUT_MS = 2_000
WRITE_ATTEMPTS = 10
BACKOFF_S = 0.05
# One purge transaction covers at most this much tick time per symbol, so the write lock is
# held briefly (an hour of ticks at 4/s is ~15k rows) and the batcher barely notices.
TICK_PURGE_SPAN_MS = 3_600_000
RESOLVED = ("won", "lost", "void")
INCOMPLETE = ("started", "exported", "verified")

Record = dict[str, Any]
Step = Callable[[str], None]


class ArchiveError(RuntimeError):
    """The run did not archive anything (it is recorded as `failed` when it got that far)."""


class ArchiverBusy(ArchiveError):
    """Another archive run holds the archiver's lock; try again later."""


class ArchiveVerificationError(ArchiveError):
    """A file, or the database, did not hold what the plan said: nothing was deleted."""


# ── the plan: what leaves ────────────────────────────────────────────────────────────────────


@dataclass
class Plan:
    """What one run moves out, read from one snapshot."""

    bets: list[Record] = field(default_factory=list)  # full rows, by seq
    entries: list[Record] = field(default_factory=list)  # full ledger rows, by entry_id
    # address → (Σ amount, Σ locked_delta, rows, highest entry_id moved)
    totals: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.bets and not self.entries


def _records(cursor: sqlite3.Cursor) -> Iterator[Record]:
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def _archivable_prefix(rows: list[Record], cutoff: int) -> int:
    """How many of one address's ledger rows (in entry_id order) may leave: the longest prefix
    of old, eligible rows that contains every row of every bet it touches.

    A cut at `i` is valid when every bet with a row before `i` has all its rows before `i`;
    `reach` is the furthest row index such a bet still needs. The answer is the largest valid
    cut not past the first ineligible row.
    """
    expected: dict[str, int] = {}  # bet_id → how many rows it must have
    last_index: dict[str, int] = {}  # bet_id → index of its last row seen
    limit = len(rows)
    for i, r in enumerate(rows):
        if r["at"] >= cutoff:
            limit = i
            break
        if r["kind"] in BET_KINDS:
            status, resolved_at = r["bet_status"], r["bet_resolved_at"]
            if status not in RESOLVED or resolved_at is None or resolved_at >= cutoff:
                limit = i
                break
            expected[r["ref"]] = len(ledger.bet_movements(status, r["bet_amount"], 0))
        last_index[r["ref"]] = i
    seen: dict[str, int] = {}
    best, reach = 0, -1
    for i in range(limit):
        r = rows[i]
        if r["kind"] in BET_KINDS:
            seen[r["ref"]] = seen.get(r["ref"], 0) + 1
            if seen[r["ref"]] < expected[r["ref"]]:
                # Rows of this bet are still to come; if none is left within the limit, no
                # cut past this point is valid.
                reach = max(reach, limit if last_index[r["ref"]] == i else last_index[r["ref"]])
        if reach < i + 1:
            best = i + 1
    return best


def _plan(conn: sqlite3.Connection, cutoff: int) -> Plan:
    plan = Plan()
    bet_ids: list[str] = []
    rows = conn.execute(
        """
        SELECT l.*, b.status AS bet_status, b.resolved_at AS bet_resolved_at,
               b.amount AS bet_amount
        FROM ledger AS l
        LEFT JOIN bets AS b ON b.bet_id = l.ref AND l.kind IN ('stake', 'payout', 'refund')
        ORDER BY l.address, l.entry_id
        """
    )
    current: str | None = None
    mine: list[Record] = []

    def finish(address: str, batch: list[Record]) -> None:
        n = _archivable_prefix(batch, cutoff)
        if n == 0:
            return
        moved = batch[:n]
        plan.totals[address] = (
            sum(r["amount"] for r in moved),
            sum(r["locked_delta"] for r in moved),
            n,
            moved[-1]["entry_id"],
        )
        for r in moved:
            if r["kind"] == "stake":
                bet_ids.append(r["ref"])
            for extra in ("bet_status", "bet_resolved_at", "bet_amount"):
                del r[extra]
            plan.entries.append(r)

    for r in _records(rows):
        if r["address"] != current:
            if current is not None:
                finish(current, mine)
            current, mine = r["address"], []
        mine.append(r)
    if current is not None:
        finish(current, mine)
    plan.entries.sort(key=lambda r: r["entry_id"])

    chunk = 500  # bound the number of SQL variables per query
    for start in range(0, len(bet_ids), chunk):
        ids = bet_ids[start : start + chunk]
        marks = ", ".join("?" * len(ids))
        plan.bets += _records(conn.execute(f"SELECT * FROM bets WHERE bet_id IN ({marks})", ids))
    plan.bets += _records(
        conn.execute("SELECT * FROM bets WHERE status = 'rejected' AND accepted_at < ?", (cutoff,))
    )
    plan.bets.sort(key=lambda r: r["seq"])
    return plan


# ── files ────────────────────────────────────────────────────────────────────────────────────


def _encode_lines(records: list[Record]) -> bytes:
    """gzip'd JSON lines, byte-for-byte reproducible (no timestamp or name in the header)."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for r in records:
            gz.write(msgspec.json.encode(r) + b"\n")
    return raw.getvalue()


def _decode_lines(data: bytes) -> list[Record]:
    text = gzip.decompress(data)
    return [msgspec.json.decode(line) for line in text.splitlines() if line]


def _write_file(path: Path, data: bytes) -> None:
    with path.open("xb") as f:  # "x": never overwrite anything
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _export(run_dir: Path, run_id: int, cutoff: int, plan: Plan, step: Step) -> str:
    """Write the data files and then the manifest; return the manifest's sha256."""
    run_dir.mkdir(parents=True, exist_ok=False)
    fsync_dir(run_dir.parent)
    files = []
    for name, records in ((BETS_FILE, plan.bets), (LEDGER_FILE, plan.entries)):
        data = _encode_lines(records)
        _write_file(run_dir / name, data)
        files.append(
            {
                "name": name,
                "rows": len(records),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        step(f"exported:{name}")
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "cutoff": cutoff,
        "bets": len(plan.bets),
        "entries": len(plan.entries),
        "files": files,
        "totals": {
            a: {"amount": t[0], "locked_delta": t[1], "entries": t[2], "last_entry_id": t[3]}
            for a, t in sorted(plan.totals.items())
        },
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    _write_file(run_dir / MANIFEST_FILE, data)
    fsync_dir(run_dir)
    return hashlib.sha256(data).hexdigest()


def read_manifest(run_dir: Path, manifest_sha256: str | None = None) -> dict[str, Any]:
    """A run's manifest, checked against its recorded sha256 when given."""
    data = (run_dir / MANIFEST_FILE).read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(data).hexdigest() != manifest_sha256:
        raise ArchiveVerificationError(f"{run_dir / MANIFEST_FILE}: sha256 differs from the run's")
    manifest: dict[str, Any] = json.loads(data)
    return manifest


def read_archive_file(run_dir: Path, name: str, manifest: dict[str, Any]) -> list[Record]:
    """One data file's records, after checking its sha256 and row count against the manifest."""
    entry = next((f for f in manifest["files"] if f["name"] == name), None)
    if entry is None:
        raise ArchiveVerificationError(f"{run_dir}: the manifest lists no {name}")
    data = (run_dir / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ArchiveVerificationError(f"{run_dir / name}: sha256 differs from the manifest")
    records = _decode_lines(data)
    if len(records) != entry["rows"]:
        raise ArchiveVerificationError(
            f"{run_dir / name}: {len(records)} rows, the manifest says {entry['rows']}"
        )
    return records


def _verify(run_dir: Path, manifest_sha256: str, plan: Plan) -> None:
    """Re-read everything from disk and compare it with the plan, record for record."""
    manifest = read_manifest(run_dir, manifest_sha256)
    if (manifest["bets"], manifest["entries"]) != (len(plan.bets), len(plan.entries)):
        raise ArchiveVerificationError(f"{run_dir}: manifest counts differ from the plan")
    for name, records in ((BETS_FILE, plan.bets), (LEDGER_FILE, plan.entries)):
        if read_archive_file(run_dir, name, manifest) != records:
            raise ArchiveVerificationError(f"{run_dir / name}: records differ from the database")


# ── database steps ───────────────────────────────────────────────────────────────────────────


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` with busy retry and backoff; COMMIT on success, ROLLBACK otherwise."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as e:
            if not connect.is_busy(e) or attempt == WRITE_ATTEMPTS - 1:
                raise
            time.sleep(BACKOFF_S * (attempt + 1))
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _recover(conn: sqlite3.Connection, now: int) -> list[int]:
    """Discard every run an earlier archiver left before its delete commit (see the module
    docstring): its files are garbage, none of its rows left the database."""
    stale = conn.execute(
        "SELECT run_id, path FROM archive_runs WHERE status IN (?, ?, ?) ORDER BY run_id",
        INCOMPLETE,
    ).fetchall()
    for run_id, path in stale:
        if path and Path(path).name.startswith(f"run-{run_id:06d}-"):
            shutil.rmtree(path, ignore_errors=True)
        with _write_transaction(conn):
            conn.execute(
                "UPDATE archive_runs SET status = 'failed', finished_at = ?, error = ? "
                "WHERE run_id = ?",
                (now, "interrupted before its delete commit; its files were discarded", run_id),
            )
        log.warning("archive run %d was interrupted; discarded its files", run_id)
    return [int(r[0]) for r in stale]


def _set_status(conn: sqlite3.Connection, run_id: int, status: str, **columns: object) -> None:
    sets = ", ".join(f"{k} = ?" for k in ("status", *columns))
    with _write_transaction(conn):
        conn.execute(
            f"UPDATE archive_runs SET {sets} WHERE run_id = ?",
            (status, *columns.values(), run_id),
        )


def _delete(conn: sqlite3.Connection, run_id: int, plan: Plan, now: int, step: Step) -> None:
    """The one transaction in which rows leave. Everything it deletes must come back from
    `DELETE … RETURNING` equal to what the verified files hold; else it rolls back."""
    with _write_transaction(conn):
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS archive_bet_ids (id TEXT PRIMARY KEY)")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS archive_entry_ids (id INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM temp.archive_bet_ids")
        conn.execute("DELETE FROM temp.archive_entry_ids")
        conn.executemany(
            "INSERT INTO temp.archive_bet_ids (id) VALUES (?)", [(b["bet_id"],) for b in plan.bets]
        )
        conn.executemany(
            "INSERT INTO temp.archive_entry_ids (id) VALUES (?)",
            [(e["entry_id"],) for e in plan.entries],
        )
        # Tombstones first, in this same transaction: a nonce never becomes free again.
        conn.execute(
            "INSERT OR IGNORE INTO archived_nonces (address, nonce, bet_id) "
            "SELECT address, nonce, bet_id FROM bets "
            "WHERE bet_id IN (SELECT id FROM temp.archive_bet_ids)"
        )
        gone_bets = list(
            _records(
                conn.execute(
                    "DELETE FROM bets WHERE bet_id IN (SELECT id FROM temp.archive_bet_ids) "
                    "RETURNING *"
                )
            )
        )
        gone_entries = list(
            _records(
                conn.execute(
                    "DELETE FROM ledger WHERE entry_id IN "
                    "(SELECT id FROM temp.archive_entry_ids) RETURNING *"
                )
            )
        )
        if sorted(gone_bets, key=lambda r: r["seq"]) != plan.bets:
            raise ArchiveVerificationError("the bets deleted differ from the archived ones")
        if sorted(gone_entries, key=lambda r: r["entry_id"]) != plan.entries:
            raise ArchiveVerificationError("the ledger rows deleted differ from the archived ones")
        for address, (amount, locked_delta, entries, last_id) in plan.totals.items():
            first_kept = conn.execute(
                "SELECT min(entry_id) FROM ledger WHERE address = ?", (address,)
            ).fetchone()[0]
            if first_kept is not None and first_kept < last_id:
                raise ArchiveVerificationError(
                    f"{address}: rows archived up to entry {last_id} are not a prefix"
                )
            conn.execute(
                "INSERT INTO archived_totals (address, amount, locked_delta, entries) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET "
                "amount = amount + excluded.amount, "
                "locked_delta = locked_delta + excluded.locked_delta, "
                "entries = entries + excluded.entries",
                (address, amount, locked_delta, entries),
            )
        done = conn.execute(
            "UPDATE archive_runs SET status = 'deleted', finished_at = ?, bets = ?, entries = ? "
            "WHERE run_id = ? AND status = 'verified'",
            (now, len(plan.bets), len(plan.entries), run_id),
        ).rowcount
        if done != 1:
            raise ArchiveVerificationError(f"run {run_id} is no longer 'verified'")
        step("deleting")


def _tick_cutoffs(conn: sqlite3.Connection, cutoff: int) -> dict[str, int]:
    """Per symbol, purge ticks before this: the retention cutoff, held back for a symbol with
    open bets to the tick before its earliest open window (the resolver reloads from there)."""
    cutoffs = {}
    for symbol in read.last_ticks(conn):
        limit = cutoff
        earliest = conn.execute(
            "SELECT min(t_start) FROM bets WHERE status = 'confirmed' AND symbol = ?", (symbol,)
        ).fetchone()[0]
        if earliest is not None and earliest < limit:
            prior = conn.execute(
                "SELECT max(ts) FROM ticks WHERE symbol = ? AND ts < ?", (symbol, earliest)
            ).fetchone()[0]
            limit = min(limit, earliest if prior is None else prior)
        cutoffs[symbol] = limit
    return cutoffs


def _purge_ticks(conn: sqlite3.Connection, cutoff: int, step: Step) -> int:
    purged = 0
    for symbol, limit in _tick_cutoffs(conn, cutoff).items():
        while True:
            first = conn.execute("SELECT min(ts) FROM ticks WHERE symbol = ?", (symbol,)).fetchone()
            if first[0] is None or first[0] >= limit:
                break
            bound = min(limit, first[0] + TICK_PURGE_SPAN_MS)
            with _write_transaction(conn):
                purged += conn.execute(
                    "DELETE FROM ticks WHERE symbol = ? AND ts < ?", (symbol, bound)
                ).rowcount
            step("purging")
    return purged


# ── the run ──────────────────────────────────────────────────────────────────────────────────


def _open(db_path: str) -> sqlite3.Connection:
    if not Path(db_path).is_file():
        raise ArchiveError(f"no database at {db_path}")
    conn = connect.open_connection(db_path, busy_timeout_ms=BUSY_TIMEOUT_MS)
    try:
        version = schema_version(conn)
        if version != LATEST:
            raise ArchiveError(f"{db_path} is at schema {version}, expected {LATEST}: tap migrate")
    except BaseException:
        conn.close()
        raise
    return conn


def last_successful_run_ms(cfg: Config) -> int | None:
    """When the newest complete archive run finished (ms), None if none has or no database
    exists yet: the maintenance actor's schedule and the metric's value after a restart."""
    path = Path(cfg.server.db_path)
    if not path.is_file():
        return None
    conn = connect.open_connection(path, read_only=True)
    try:
        row = conn.execute(
            "SELECT max(finished_at) FROM archive_runs WHERE status = 'deleted'"
        ).fetchone()
    except sqlite3.OperationalError:  # not migrated yet
        return None
    finally:
        conn.close()
    return None if row[0] is None else int(row[0])


def run_archive(cfg: Config, now_ms: int | None, *, on_step: Step | None = None) -> dict[str, Any]:
    """Archive what is older than `archive.after_days` and purge ticks past retention; return
    a report (run id, counts, files, duration).

    Blocking. `now_ms=None` reads the wall clock. `on_step(name)` is called after each step
    ("recovered", "started", "exported:<file>", "exported", "verified", "deleting" — inside the
    delete transaction, before COMMIT — "deleted", "purging", "done"): for progress logs, and
    for the tests that kill the run at each of them. Raises `ArchiverBusy` if another run holds
    the lock, `ArchiveError` (recorded as a failed run) if the database fails the integrity
    check or a file does not verify; nothing is deleted in either case.
    """
    began = time.monotonic()
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    step: Step = on_step or (lambda _name: None)
    a = cfg.archive
    root = Path(a.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cutoff = now - a.after_days * DAY_MS
    tick_cutoff = now - a.tick_retention_days * DAY_MS
    try:
        lock = FileLock(root / LOCK_FILE)
        use = DatabaseUse(cfg.server.db_path)
        with lock, use:
            conn = _open(cfg.server.db_path)
            try:
                report = _run(conn, root, cutoff, tick_cutoff, now, step)
            finally:
                conn.close()
    except LockHeld as e:
        raise ArchiverBusy(f"another archive run or a restore is in progress ({e})") from None
    report["duration_s"] = round(time.monotonic() - began, 3)
    step("done")
    return report


def _run(
    conn: sqlite3.Connection, root: Path, cutoff: int, tick_cutoff: int, now: int, step: Step
) -> dict[str, Any]:
    recovered = _recover(conn, now)
    step("recovered")
    with _write_transaction(conn):
        cur = conn.execute(
            "INSERT INTO archive_runs (started_at, cutoff, status) VALUES (?, ?, 'started')",
            (now, cutoff),
        )
        run_id = cur.lastrowid
        assert run_id is not None
        run_dir = root / f"run-{run_id:06d}-{now}"
        conn.execute("UPDATE archive_runs SET path = ? WHERE run_id = ?", (str(run_dir), run_id))
    step("started")
    report: dict[str, Any] = {
        "run_id": run_id,
        "status": "archived",
        "cutoff": cutoff,
        "recovered_runs": recovered,
    }
    try:
        conn.execute("BEGIN")  # one snapshot for the check and the plan
        try:
            violations = integrity_check(conn)
            if violations:
                raise ArchiveError(
                    f"the database fails the integrity check ({len(violations)} violations, "
                    f"first: {violations[0]}); not archiving"
                )
            plan = _plan(conn, cutoff)
        finally:
            conn.execute("COMMIT")
        if plan.empty:
            _set_status(conn, run_id, "deleted", finished_at=now, path=None)
            report.update(status="empty", bets=0, entries=0, dir=None, files=[])
        else:
            digest = _export(run_dir, run_id, cutoff, plan, step)
            _set_status(
                conn,
                run_id,
                "exported",
                manifest_sha256=digest,
                bets=len(plan.bets),
                entries=len(plan.entries),
            )
            step("exported")
            _verify(run_dir, digest, plan)
            manifest = read_manifest(run_dir, digest)
            _set_status(conn, run_id, "verified")
            step("verified")
            report.update(
                bets=len(plan.bets),
                entries=len(plan.entries),
                accounts=len(plan.totals),
                dir=str(run_dir),
                manifest_sha256=digest,
                files=manifest["files"],
            )
            # The last thing that may fail the run: once this commits, the files are the
            # archive and nothing below may remove them.
            _delete(conn, run_id, plan, now, step)
    except Exception as e:
        _fail(conn, run_id, run_dir, now, e)
        raise
    metrics.ARCHIVE_TIMESTAMP.set(now / 1000)
    step("deleted")
    log.info("archive run %d: %s bets, %s ledger rows", run_id, report["bets"], report["entries"])
    purged = _purge_ticks(conn, tick_cutoff, step)
    _set_status(conn, run_id, "deleted", ticks_purged=purged)
    report.update(ticks_purged=purged, tick_cutoff=tick_cutoff)
    return report


def _fail(conn: sqlite3.Connection, run_id: int, run_dir: Path, now: int, error: Exception) -> None:
    """Record a failed run and remove its files (none of its rows left the database)."""
    log.error("archive run %d failed: %s", run_id, error)
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        row = conn.execute("SELECT status FROM archive_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None and row[0] == "deleted":
            return  # committed after all: these files are the only copy of its rows
        shutil.rmtree(run_dir, ignore_errors=True)
        _set_status(conn, run_id, "failed", finished_at=now, error=str(error)[:1000])
    except sqlite3.Error as e:  # the next run finds it unfinished and discards it
        log.error("archive run %d: could not record the failure: %s", run_id, e)
