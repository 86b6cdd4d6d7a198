"""The maintenance actors fire on schedule (mock clock), survive failed runs, and do their job
on a real database: archive + metric, integrity gauge + logs, backups + retention."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from actors import maintenance
from tap.config import Config, load_config
from tap.messages import Deposit
from tap.runtime.clock import Clock
from tap.store import archive, backup, connect, write

NOW = 1_732_290_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
WEEK = 7 * DAY

T = TypeVar("T")


def make_cfg(tmp_path: Path, **archive_overrides: int) -> Config:
    env = {
        "TAP__SERVER__DB_PATH": str(tmp_path / "tap.db"),
        "TAP__ARCHIVE__DIR": str(tmp_path / "archive"),
        "TAP__ARCHIVE__BACKUP_DIR": str(tmp_path / "backups"),
    }
    env |= {f"TAP__ARCHIVE__{k.upper()}": str(v) for k, v in archive_overrides.items()}
    return load_config(environ=env)


def make_db(cfg: Config) -> None:
    conn = connect.open_writer(cfg.server.db_path)
    try:
        write.apply_batch(conn, [Deposit(address="0xaa", amount=500, ref="d1", at=NOW)], NOW)
    finally:
        conn.close()


def no_report(cfg: Config, now_ms: int) -> dict[str, Any]:
    return {}


class Runs:
    """Wraps a job: tells the test about each call once the job has finished (it runs in a
    worker thread; the notice goes back through `trio.from_thread`), with the `now_ms` it was
    given and what `observe()` returned when it started — which is the state the actor left
    behind after the previous run, read at a moment that does not race with the actor."""

    def __init__(self, observe: Callable[[], Any] = lambda: None) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[int, Any]](100)  # > any test
        self.observe = observe
        self.fail_first = 0

    def wrap(self, job: Callable[..., T]) -> Callable[..., T]:
        def run(cfg: Config, *rest: Any) -> T:
            seen = self.observe()
            try:
                if self.fail_first > 0:
                    self.fail_first -= 1
                    raise RuntimeError("the disk is full")
                return job(cfg, *rest)
            finally:
                when = rest[0] if rest else -1
                trio.from_thread.run_sync(self.send.send_nowait, (when, seen))

        return run

    async def calls(self, n: int) -> list[tuple[int, Any]]:
        return [await self.receive.receive() for _ in range(n)]

    async def times(self, n: int) -> list[int]:
        return [when for when, _ in await self.calls(n)]


async def test_the_archiver_runs_at_start_and_then_every_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path)
    runs = Runs()
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        job = runs.wrap(no_report)
        await nursery.start(partial(maintenance.run_archiver, cfg, clock, job=job))
        assert await runs.times(3) == [NOW, NOW + WEEK, NOW + 2 * WEEK]
        nursery.cancel_scope.cancel()


async def test_the_archiver_resumes_its_schedule_and_metric_from_the_last_run(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path)
    make_db(cfg)
    last = NOW - 2 * DAY
    conn = sqlite3.connect(cfg.server.db_path)
    conn.execute(
        "INSERT INTO archive_runs (started_at, finished_at, cutoff, status) "
        "VALUES (?, ?, 0, 'deleted')",
        (last, last),
    )
    conn.commit()
    conn.close()
    runs = Runs()
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        job = runs.wrap(no_report)
        await nursery.start(partial(maintenance.run_archiver, cfg, clock, job=job))
        assert (
            REGISTRY.get_sample_value("tap_last_successful_archive_timestamp_seconds")
            == last / 1000
        )
        assert await runs.times(2) == [last + WEEK, last + 2 * WEEK]
        nursery.cancel_scope.cancel()


async def test_a_failed_run_is_logged_retried_soon_and_the_actor_lives_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(tmp_path)
    runs = Runs()
    runs.fail_first = 2
    retry = maintenance.FAILURE_RETRY_MS
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        job = runs.wrap(no_report)
        await nursery.start(partial(maintenance.run_archiver, cfg, clock, job=job))
        assert await runs.times(4) == [NOW, NOW + retry, NOW + 2 * retry, NOW + 2 * retry + WEEK]
        nursery.cancel_scope.cancel()
    failures = [r for r in caplog.records if "archive run failed" in r.getMessage()]
    assert len(failures) == 2
    assert "the disk is full" in (failures[0].exc_text or "")


async def test_the_archiver_archives_a_real_database_and_sets_the_metric(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path)
    make_db(cfg)
    runs = Runs()
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW + 40 * DAY)
        job = runs.wrap(lambda cfg, now: archive.run_archive(cfg, now))
        await nursery.start(partial(maintenance.run_archiver, cfg, clock, job=job))
        (first,) = await runs.times(1)
        nursery.cancel_scope.cancel()
    assert first == NOW + 40 * DAY
    assert (
        REGISTRY.get_sample_value("tap_last_successful_archive_timestamp_seconds") == first / 1000
    )
    conn = sqlite3.connect(cfg.server.db_path)
    try:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 0
        assert conn.execute("SELECT amount FROM archived_totals").fetchone()[0] == 500
    finally:
        conn.close()


async def test_the_integrity_actor_sets_the_gauge_and_logs_each_violation(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(tmp_path)
    make_db(cfg)
    conn = sqlite3.connect(cfg.server.db_path)
    conn.execute("UPDATE accounts SET available = available + 1")
    conn.commit()
    runs = Runs(observe=lambda: REGISTRY.get_sample_value("tap_integrity_violations"))
    caplog.set_level(logging.INFO, logger="tap.maintenance")
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        job = runs.wrap(maintenance.integrity_violations)
        await nursery.start(partial(maintenance.run_integrity, cfg, clock, job=job))
        await runs.calls(1)
        conn.execute("UPDATE accounts SET available = available - 1")  # repaired
        conn.commit()
        (_, after_first), (_, after_second) = await runs.calls(2)
        nursery.cancel_scope.cancel()
    conn.close()
    assert after_first == 2  # Σ amount, and Σ(amount + locked_delta)
    assert after_second == 0
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "integrity violation: account 0xaa: Σ amount 500 != available 501" in logged
    assert "integrity check: 2 violation(s)" in logged
    assert "integrity check: OK" in caplog.messages


async def test_the_integrity_check_runs_daily(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path)
    runs = Runs()
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)

        def check(cfg: Config) -> list[str]:
            seen.append(trio.from_thread.run_sync(clock.now_ms))
            return []

        await nursery.start(partial(maintenance.run_integrity, cfg, clock, job=runs.wrap(check)))
        await runs.times(3)
        # Completion is what the integrity-overdue alert watches.
        await gauge_becomes(
            "tap_last_successful_integrity_check_timestamp_seconds", (NOW + 2 * DAY) / 1000
        )
        nursery.cancel_scope.cancel()
    assert seen == [NOW, NOW + DAY, NOW + 2 * DAY]


async def test_backups_are_taken_hourly_and_only_the_newest_are_kept(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path, backup_keep=3)
    make_db(cfg)
    runs = Runs()
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        job = runs.wrap(lambda cfg, now: backup.backup_now(cfg, None, now_ms=now))
        await nursery.start(partial(maintenance.run_backups, cfg, clock, job=job))
        times = await runs.times(6)
        nursery.cancel_scope.cancel()
    assert times == [NOW + i * HOUR for i in range(6)]
    kept = [p.name for p in backup.list_backups(cfg.archive.backup_dir)]
    assert kept == [backup.backup_name(NOW + i * HOUR) for i in (3, 4, 5)]


async def test_backups_resume_from_the_newest_backup_on_disk(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path)
    make_db(cfg)
    backup.backup_now(cfg, None, now_ms=NOW - 20 * 60_000)
    runs = Runs()
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        job = runs.wrap(lambda cfg, now: backup.backup_now(cfg, None, now_ms=now))
        await nursery.start(partial(maintenance.run_backups, cfg, clock, job=job))
        # Right from the start the gauge says how old the newest backup on disk is.
        assert backup_gauge() == (NOW - 20 * 60_000) / 1000
        assert await runs.times(1) == [NOW + 40 * 60_000]
        await gauge_becomes(BACKUP_GAUGE, (NOW + 40 * 60_000) / 1000)
        nursery.cancel_scope.cancel()


BACKUP_GAUGE = "tap_last_successful_backup_timestamp_seconds"


def backup_gauge() -> float | None:
    return REGISTRY.get_sample_value(BACKUP_GAUGE)


async def gauge_becomes(name: str, value: float, within_s: float = 10.0) -> None:
    """Wait, in real time and without letting the mock clock jump, until the actor (resumed
    when its worker thread returns) has set the gauge: a sleep would let the autojump clock run
    ahead while the thread still works."""
    deadline = time.monotonic() + within_s
    while REGISTRY.get_sample_value(name) != value:
        assert time.monotonic() < deadline, (name, REGISTRY.get_sample_value(name), value)
        await trio.lowlevel.checkpoint()


async def test_a_failed_backup_leaves_the_backup_gauge_where_it_was(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path)
    make_db(cfg)
    backup.backup_now(cfg, None, now_ms=NOW - 2 * HOUR)

    def failing(cfg: Config, now: int) -> object:
        raise OSError("disk full")

    runs = Runs()
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        await nursery.start(partial(maintenance.run_backups, cfg, clock, job=runs.wrap(failing)))
        await runs.times(1)
        with trio.move_on_after(60):  # the failure is retried later; nothing sets the gauge
            await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    assert backup_gauge() == (NOW - 2 * HOUR) / 1000


async def test_an_interval_of_zero_disables_a_job(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cfg = make_cfg(tmp_path, interval_s=0, integrity_interval_s=0, backup_interval_s=0)
    clock = Clock(epoch_ms=NOW)
    with trio.fail_after(1):  # mock time: each returns at once instead of sleeping forever
        async with trio.open_nursery() as nursery:
            for actor in (
                maintenance.run_archiver,
                maintenance.run_integrity,
                maintenance.run_backups,
            ):
                await nursery.start(partial(actor, cfg, clock))


def test_next_due_stays_on_the_grid_and_skips_missed_slots() -> None:
    assert maintenance.next_due(1_000, 100, 1_000, failed=False) == 1_100
    assert maintenance.next_due(1_000, 100, 1_350, failed=False) == 1_400
    retry = maintenance.FAILURE_RETRY_MS
    assert maintenance.next_due(0, 10 * retry, 5, failed=True) == 5 + retry
    assert maintenance.next_due(0, 100, 5, failed=True) == 100


async def test_a_backup_another_process_made_or_is_making_counts_for_this_slot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Two processes serving one database: neither fails, and there is one backup a slot."""
    cfg = make_cfg(tmp_path)
    make_db(cfg)
    first = True

    def busy_then_real(cfg: Config, now: int) -> object:
        nonlocal first
        if first:
            first = False
            raise backup.LockHeld(Path(cfg.archive.backup_dir), None)  # the other one writes
        return backup.backup_now(cfg, None, now_ms=now)

    runs = Runs()
    async with trio.open_nursery() as nursery:
        clock = Clock(epoch_ms=NOW)
        job = runs.wrap(busy_then_real)
        await nursery.start(partial(maintenance.run_backups, cfg, clock, job=job))
        assert await runs.times(1) == [NOW]  # lock held: skipped, not a failure
        # The other process finishes its backup half an hour in, so our NOW+1h slot is skipped
        # without calling the job, and the next one (NOW+2h) is ours.
        await clock.sleep_until_ms(NOW + 30 * 60_000)
        # Synchronously, on purpose: in a worker thread the mock clock could jump to our next
        # slot meanwhile and the two backups would meet at the lock.
        backup.backup_now(cfg, None, now_ms=NOW + 30 * 60_000)
        # The skipped slot still reports the other process's backup as the newest.
        await clock.sleep_until_ms(NOW + HOUR + 1000)
        await gauge_becomes(BACKUP_GAUGE, (NOW + 30 * 60_000) / 1000)
        assert await runs.times(1) == [NOW + 2 * HOUR]
        nursery.cancel_scope.cancel()
