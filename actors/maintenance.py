"""The periodic maintenance actors: archiver (weekly), integrity check (daily), backups (hourly).

Each is a clock-driven loop that wakes at its due time, runs one blocking job in a worker
thread with its own SQLite connection, and schedules the next. They decide *when*; what a job
does lives in `tap/store/archive.py`, `tap/store/integrity.py` and `tap/store/backup.py`.

A failed run never takes the server down: it is logged, and retried after
`FAILURE_RETRY_MS` (or the interval, if that is shorter). The alarm for a job that keeps failing
is a metric that stops moving — `tap_last_successful_archive_timestamp` is the dead man's
switch; `tap_integrity_violations` says what the last check found.

Schedule. The first run is due at `last success + interval` when the last success is known
(the archive's from `archive_runs`, the backups' from the newest backup's name), else at once:
a server restarted more often than the interval still archives and backs up. The integrity
check has no stored history and runs at start. Later runs stay on the grid `due + k × interval`
(a run that overran skips the slots it missed instead of running back to back). An interval of
0 or less disables the job.

Threads. The archive and backup calls are not abandoned on cancellation
(`abandon_on_cancel=False`): shutdown waits for them, so the batcher's final commit never
competes with an archive still holding the write lock. The integrity check only reads, so it is
abandoned at once on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from tap.config import Config
from tap.runtime import metrics
from tap.runtime.clock import Clock
from tap.store import archive, backup, connect
from tap.store.integrity import integrity_check

log = logging.getLogger("tap.maintenance")

FAILURE_RETRY_MS = 600_000  # a failed run is retried after 10 min, not after a whole week

ArchiveJob = Callable[[Config, int], Mapping[str, Any]]
IntegrityJob = Callable[[Config], list[str]]
BackupJob = Callable[[Config, int], Path]


def _archive(cfg: Config, now_ms: int) -> Mapping[str, Any]:
    return archive.run_archive(cfg, now_ms)


def _backup(cfg: Config, now_ms: int) -> Path:
    return backup.backup_now(cfg, None, now_ms=now_ms)


def integrity_violations(cfg: Config) -> list[str]:
    """The ledger integrity check on a fresh read-only connection (a WAL snapshot)."""
    conn = connect.open_connection(cfg.server.db_path, read_only=True)
    try:
        return integrity_check(conn)
    finally:
        conn.close()


def next_due(due: int, interval_ms: int, now_ms: int, *, failed: bool) -> int:
    """The next slot on the grid `due + k × interval` after `now_ms`; after a failure, the
    retry time if that comes sooner."""
    slot = due + ((max(now_ms - due, 0) // interval_ms) + 1) * interval_ms
    if failed:
        return min(slot, now_ms + FAILURE_RETRY_MS)
    return slot


async def _every(
    name: str,
    clock: Clock,
    interval_ms: int,
    first_due: int,
    job: Callable[[int], Awaitable[None]],
) -> None:
    due = first_due
    while True:
        await clock.sleep_until_ms(due)
        now = clock.now_ms()
        failed = False
        try:
            await job(now)
        except Exception:
            failed = True
            log.exception("%s run failed; retrying at the next slot or after the retry delay", name)
        due = next_due(due, interval_ms, clock.now_ms(), failed=failed)


def _first_due(last_ms: int | None, interval_ms: int, now_ms: int) -> int:
    return now_ms if last_ms is None else max(now_ms, last_ms + interval_ms)


async def run_archiver(
    cfg: Config,
    clock: Clock,
    *,
    job: ArchiveJob = _archive,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Archive every `archive.interval_s`. At start it restores the archive-timestamp metric
    from the last successful run, so a restart does not look like a dead archiver."""
    interval_ms = cfg.archive.interval_s * 1000
    if interval_ms <= 0:
        task_status.started()
        return
    try:
        last = await trio.to_thread.run_sync(archive.last_successful_run_ms, cfg)
    except Exception:
        log.exception("archiver: could not read the last run; archiving at once")
        last = None
    if last is not None:
        metrics.ARCHIVE_TIMESTAMP.set(last / 1000)

    async def one(now: int) -> None:
        report = await trio.to_thread.run_sync(job, cfg, now)
        log.info(
            "archive run %s: %s, %s bets, %s ledger rows, %s ticks purged",
            report.get("run_id"),
            report.get("status"),
            report.get("bets"),
            report.get("entries"),
            report.get("ticks_purged"),
        )

    task_status.started()
    await _every("archive", clock, interval_ms, _first_due(last, interval_ms, clock.now_ms()), one)


async def run_integrity(
    cfg: Config,
    clock: Clock,
    *,
    job: IntegrityJob = integrity_violations,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the ledger integrity check at start and every `archive.integrity_interval_s`;
    `tap_integrity_violations` = what it found, and each violation is logged."""
    interval_ms = cfg.archive.integrity_interval_s * 1000
    if interval_ms <= 0:
        task_status.started()
        return

    async def one(now: int) -> None:
        violations = await trio.to_thread.run_sync(job, cfg, abandon_on_cancel=True)
        metrics.INTEGRITY_VIOLATIONS.set(len(violations))
        metrics.INTEGRITY_TIMESTAMP.set(clock.now_ms() / 1000)  # it ran to the end
        for v in violations:
            log.error("integrity violation: %s", v)
        if violations:
            log.error("integrity check: %d violation(s)", len(violations))
        else:
            log.info("integrity check: OK")

    task_status.started()
    await _every("integrity check", clock, interval_ms, clock.now_ms(), one)


async def run_backups(
    cfg: Config,
    clock: Clock,
    *,
    job: BackupJob = _backup,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Back the database up every `archive.backup_interval_s` into `archive.backup_dir`.

    `tap_last_successful_backup_timestamp_seconds` is the newest backup's time (its name says
    when it was taken), whoever wrote it: what an operator restoring now would get."""
    interval_ms = cfg.archive.backup_interval_s * 1000
    if interval_ms <= 0:
        task_status.started()
        return
    last = await trio.to_thread.run_sync(backup.newest_backup_ms, cfg)
    if last is not None:
        metrics.BACKUP_TIMESTAMP.set(last / 1000)

    async def one(now: int) -> None:
        # Several processes may serve one database: a backup another one made within the
        # interval counts, and one being written right now (its lock held) is not an error.
        newest = await trio.to_thread.run_sync(backup.newest_backup_ms, cfg)
        if newest is not None and now - newest < interval_ms:
            metrics.BACKUP_TIMESTAMP.set(newest / 1000)
            log.info(
                "backup: one from %d ms ago is recent enough; skipping this slot", now - newest
            )
            return
        try:
            await trio.to_thread.run_sync(job, cfg, now)  # `backup_now` logs the file it wrote
        except backup.LockHeld:
            log.info("backup: another process is writing one now; skipping this slot")
            return
        metrics.BACKUP_TIMESTAMP.set(now / 1000)

    task_status.started()
    await _every("backup", clock, interval_ms, _first_due(last, interval_ms, clock.now_ms()), one)
