"""The batcher: the only writer of the ledger database.

It receives `WriterRequest`s, groups them into adaptive batches — flushed at `max_batch` items or
`max_wait_ms` after the batch's *first* item, never on an idle timer; a batch holding a request
somebody waits on (`answered_after_commit`: a bet or payment whose answer is held until its
commit) is flushed as soon as a scheduling round brings nothing new, so no client waits out the
window for company that is not coming — and applies each batch in
one SQLite transaction (`tap.store.write.apply_batch`: every decision about money is made there and
in `tap.ledger`). Only after `COMMIT` returns does it hand the batch's events to `committed`, so
nothing is announced that a crash could take back. When its input channel closes it drains what
is left, commits, and returns: that is graceful shutdown.

Thread: one connection, used only by the writer's own thread (`_DbThread`), one call at a time,
in order. A call hands the thread a function and parks the awaiting task until the thread
reschedules it with the outcome: one queue put and one wake-up each way, about half the CPU of a
`trio.to_thread.run_sync` round trip here (≈ 100 µs against ≈ 175 µs; it runs once per commit).
A call in flight is never abandoned (the wait cannot be cancelled), so cancellation cannot leave a
transaction half-done in a thread nobody waits for; the thread ends after the connection is
closed.

What the caller decides: the database file, the batching window (`BatcherConfig`), the clock,
which requests somebody waits on (`awaited`), and what happens to the committed events
(`committed`: usually `actors.fanout.CommittedFanout.publish`, which hands them to every
consumer without ever blocking the writer).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import outcome
import trio

from tap.config import BatcherConfig
from tap.messages import (
    AdminCredit,
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    Deposit,
    PlaceBet,
    Settle,
    StoreTicks,
    Withdrawal,
    WriterRequest,
)
from tap.runtime import metrics
from tap.runtime.clock import Clock
from tap.store import connect, write

log = logging.getLogger("tap.batcher")

CommittedSink = Callable[[Sequence[Committed]], None]

# ── the writer ───────────────────────────────────────────────────────────────────────────────


def _count(events: Sequence[Committed]) -> None:
    """Bets confirmed / rejected by reason / resolved by outcome, one `inc` per label per batch
    (a labelled counter takes a lock per call; a batch holds hundreds of events)."""
    tally: Counter[tuple[Any, tuple[str, ...]]] = Counter()
    for event in events:
        match event:
            case BetConfirmed():
                tally[(metrics.BETS, ("confirmed", ""))] += 1
            case BetRejected():
                tally[(metrics.BETS, ("rejected", event.reason))] += 1
            case BetResolved():
                tally[(metrics.BETS_RESOLVED, (event.bet.status,))] += 1
            case _:
                pass
    for (metric, labels), n in tally.items():
        metrics.child(metric, *labels).inc(n)


def _timed_apply(
    conn: sqlite3.Connection,
    batch: Sequence[WriterRequest],
    now_ms: int,
    cell_caps: Mapping[str, int] | None = None,
) -> list[Committed]:
    started = time.perf_counter()
    events = write.apply_batch(conn, batch, now_ms, cell_caps=cell_caps)
    metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
    return events


def answered_after_commit(req: WriterRequest) -> bool:
    """Whether a client waits on this request's commit: every bet (its 202, `bet_ack` or
    `ack: "commit"` answer is held until the batch commits — on this process or, over the bus,
    on an edge) and every deposit, withdrawal and credit (201 after commit). Settlements and
    ticks are the server's own. Pass it as `run(awaited=…)`."""
    return isinstance(req, PlaceBet | Deposit | Withdrawal | AdminCredit)


def _internal(req: WriterRequest) -> bool:
    """Requests nobody waits on and that must not be lost: kept for the next batch if this one
    could not get the lock (both are idempotent, so applying them late is safe)."""
    return isinstance(req, Settle | StoreTicks)


class _DbThread:
    """The writer's own thread: runs the calls it is given one at a time, in order, each for
    the trio task that awaits it (module text: why not `trio.to_thread`)."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="tap-writer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, task = call
            result = outcome.capture(fn)
            self._token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the thread; its result or exception here. Not cancellable once
        handed over (a checkpoint before that is)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._calls.put((partial(fn, *args), trio.lowlevel.current_task()))
        return await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED  # the call runs to its end: wait for it
        )

    def stop(self) -> None:
        """End the thread after the calls already given (it holds no resource of its own)."""
        self._calls.put(None)


class _Writer:
    def __init__(
        self,
        cfg: BatcherConfig,
        clock: Clock,
        conn: sqlite3.Connection,
        thread: _DbThread,
        committed: CommittedSink,
        cell_caps: Mapping[str, int] | None = None,
    ) -> None:
        self.cell_caps = cell_caps
        self.cfg = cfg
        self.clock = clock
        self.conn = conn
        self.thread = thread
        self.committed = committed

    def backoff_s(self, attempt: int) -> float:
        """Doubling from `retry_backoff_ms`, capped at 16× it: the lock holder is another process
        (archiver, backup) that will let go; waiting longer per try only adds latency."""
        return self.cfg.retry_backoff_ms * min(1 << (attempt - 1), 16) / 1000.0

    async def commit(self, batch: list[WriterRequest]) -> list[WriterRequest]:
        """Apply and announce one batch; return what must be carried into the next one.

        Shielded: once the batch left the channel it is committed and announced, or refused and
        announced, even if the surrounding nursery is being cancelled (the work is bounded by
        `busy_retries`).
        """
        metrics.BATCH_SIZE.observe(len(batch))
        with trio.CancelScope(shield=True):
            carried = await self.write(batch)
        return carried

    async def write(self, batch: list[WriterRequest]) -> list[WriterRequest]:
        attempt = 0
        while True:
            try:
                events = await self.thread.run(
                    _timed_apply, self.conn, batch, self.clock.now_ms(), self.cell_caps
                )
            except sqlite3.OperationalError as e:
                if not connect.is_busy(e):
                    self.fatal(batch, e)
                    raise
                if attempt >= self.cfg.busy_retries:
                    return self.give_up(batch)
                attempt += 1
                metrics.BATCH_RETRIES.inc()
                await trio.sleep(self.backoff_s(attempt))
                continue
            except BaseException as e:
                if isinstance(e, Exception):
                    self.fatal(batch, e)
                raise
            _count(events)
            self.committed(events)
            return []

    def fatal(self, batch: list[WriterRequest], error: Exception) -> None:
        """The database cannot be written (`write.is_fatal`: a broken file or disk, or a ledger
        that contradicts its rules): say so as loudly as we can before the writer stops. The
        batch was rolled back; nothing in it was confirmed, so no money moved."""
        log.critical(
            "WRITER STOPPED: %s: %s; %d requests in the failing batch were not written "
            "(nothing confirmed); run `tap check` before restarting",
            type(error).__name__,
            error,
            len(batch),
        )

    def give_up(self, batch: list[WriterRequest]) -> list[WriterRequest]:
        """The lock stayed busy through every retry: refuse what someone is waiting on (nothing
        was stored, so they may retry with the same nonce) and keep the rest for later."""
        refused = [r for r in batch if not _internal(r)]
        carried = [r for r in batch if _internal(r)]
        log.error(
            "write lock busy after %d retries: refused %d requests, carrying %d",
            self.cfg.busy_retries,
            len(refused),
            len(carried),
        )
        events = write.refusals(refused, write.STORE_BUSY)
        _count(events)
        self.committed(events)
        return carried


async def _gather(
    requests: trio.MemoryReceiveChannel[WriterRequest],
    batch: list[WriterRequest],
    max_batch: int,
    max_wait_s: float,
    awaited: Callable[[WriterRequest], bool] | None = None,
) -> bool:
    """Fill `batch` (which may start with carried items) up to `max_batch`, waiting at most
    `max_wait_s` after its first item; block for a first item only if it is empty. Returns
    True when the channel is closed and drained.

    With `awaited`, a batch that holds a request somebody is waiting on closes as soon as one
    scheduling round (a checkpoint: the requests admitted meanwhile get in) brings nothing new.
    Idle or lightly loaded, that bet commits at once instead of `max_wait_s` later; under load
    every round brings more and the batch grows by itself up to `max_wait_s` / `max_batch`,
    since what queues up while the previous commit was in its thread is taken in one go.
    Requests nobody waits on (settlements, ticks) keep the full window: fewer commits.
    """
    if not batch:
        try:
            batch.append(await requests.receive())
        except trio.EndOfChannel:
            return True
    urgent = awaited is not None and any(awaited(r) for r in batch)
    deadline = trio.current_time() + max_wait_s
    while len(batch) < max_batch:
        try:
            req = requests.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return True
        else:
            batch.append(req)
            urgent = urgent or (awaited is not None and awaited(req))
            continue
        if urgent:
            if trio.current_time() >= deadline:
                return False
            await trio.lowlevel.checkpoint()
            try:
                req = requests.receive_nowait()
            except trio.WouldBlock:
                return False  # a whole round and nothing new: commit what we have
            except trio.EndOfChannel:
                return True
            batch.append(req)
            continue
        with trio.move_on_at(deadline):
            try:
                req = await requests.receive()
            except trio.EndOfChannel:
                return True
            batch.append(req)
            urgent = awaited is not None and awaited(req)
            continue
        return False  # max_wait passed since the first item
    return False


async def run(
    cfg: BatcherConfig,
    clock: Clock,
    requests: trio.MemoryReceiveChannel[WriterRequest],
    committed: CommittedSink,
    db_path: str | Path,
    *,
    synchronous: str = "FULL",
    cell_caps: Mapping[str, int] | None = None,
    awaited: Callable[[WriterRequest], bool] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write every request from `requests` until it closes; announce each commit to `committed`.

    `cell_caps`: symbol → `max_cell_liability` (units, 0 = none), enforced on every bet; the
    liability table is recomputed from the open bets before the first request.

    `awaited`: whether somebody waits on a request's answer (`answered_after_commit` in tap);
    a batch holding one closes without waiting out `max_wait_ms` (see `_gather`). None: every
    batch takes the full window.

    Ready (`task_status.started()`) once the database is open and migrated. `committed` is called
    in trio context after each commit with the batch's events (usually `CommittedFanout.publish`;
    closing the fan-out after this returns is the caller's job). Returns after the channel closed
    and everything in it was committed; raises on any database error other than a busy lock —
    the ledger is never written around an error it does not understand.
    """
    thread = _DbThread()
    try:
        conn = await thread.run(
            partial(
                connect.open_writer,
                db_path,
                busy_timeout_ms=cfg.busy_timeout_ms,
                synchronous=synchronous,
            )
        )
    except BaseException:
        thread.stop()
        raise
    writer = _Writer(cfg, clock, conn, thread, committed, cell_caps)
    try:
        await thread.run(partial(connect.while_busy, partial(write.rebuild_cell_liability, conn)))
        task_status.started()
        carried: list[WriterRequest] = []
        closed = False
        while not closed:
            batch = carried
            closed = await _gather(
                requests, batch, cfg.max_batch, cfg.max_wait_ms / 1000.0, awaited
            )
            metrics.BATCH_QUEUE_DEPTH.set(requests.statistics().current_buffer_used)
            if batch:
                carried = await writer.commit(batch)
        if carried:
            carried = await writer.commit(carried)
        if carried:
            log.error("shutting down with %d settlement/tick requests unwritten", len(carried))
    finally:
        with trio.CancelScope(shield=True):
            try:
                await thread.run(conn.close)
            finally:
                thread.stop()
