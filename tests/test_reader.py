"""The edge's read-only pool: never more connections than threads, all closed by `close()`."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio
import trio._core._thread_cache as thread_cache

from tap.store import connect
from tap.store.reader import StoreReader


class OpenedConnections:
    """Wraps `connect.open_connection` to remember every read connection the reader opens."""

    def __init__(self) -> None:
        self.opened: list[sqlite3.Connection] = []
        self._real = connect.open_connection

    def __call__(self, *args: object, **kwargs: object) -> sqlite3.Connection:
        conn = self._real(*args, **kwargs)  # type: ignore[arg-type]
        self.opened.append(conn)
        return conn

    def still_open(self) -> int:
        alive = 0
        for conn in self.opened:
            try:
                conn.execute("SELECT 1")
            except sqlite3.ProgrammingError:
                continue
            alive += 1
        return alive


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    connect.open_writer(path).close()
    return path


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> OpenedConnections:
    spy = OpenedConnections()
    monkeypatch.setattr(connect, "open_connection", spy)
    return spy


async def test_retired_worker_threads_do_not_leak_connections(
    database: Path, opened: OpenedConnections, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle timeout of zero makes trio retire each worker thread as soon as its job is done,
    # the same thing that happens to every thread after ~10 s of quiet in production. Joining
    # the worker after each call (the loop is blocked meanwhile, so it cannot be handed a new
    # job) makes every call below run on a brand-new thread.
    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0)
    reader = StoreReader(database, threads=2)
    workers: list[threading.Thread] = []

    def remember_thread(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT 1").fetchone()
        workers.append(threading.current_thread())

    for _ in range(20):
        await reader.run(remember_thread)
        workers[-1].join(timeout=5)
        assert not workers[-1].is_alive()
    assert len({id(t) for t in workers}) == 20
    assert opened.still_open() <= 2
    assert reader.open_connections <= 2
    reader.close()
    assert opened.still_open() == 0


async def test_concurrent_queries_never_share_a_connection_or_exceed_the_bound(
    database: Path, opened: OpenedConnections
) -> None:
    reader = StoreReader(database, threads=3)
    in_use: set[int] = set()
    most_at_once = 0
    guard = threading.Lock()
    release = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        nonlocal most_at_once
        with guard:
            assert id(conn) not in in_use, "one connection lent to two queries at once"
            in_use.add(id(conn))
            most_at_once = max(most_at_once, len(in_use))
            if len(in_use) == 3:
                release.set()
        # Blocks until three queries hold connections together (or a generous bound if the
        # limiter never lets three in, which the assertions below then report).
        release.wait(timeout=5)
        conn.execute("SELECT count(*) FROM accounts").fetchone()
        with guard:
            in_use.discard(id(conn))

    for _round in range(3):
        release.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(reader.run, hold)
        assert reader.open_connections <= 3
        assert opened.still_open() <= 3
    assert most_at_once == 3
    assert len(opened.opened) <= 3
    reader.close()
    assert opened.still_open() == 0
    assert not await reader.ping()


async def test_close_while_a_query_runs_closes_its_connection_when_it_returns(
    database: Path, opened: OpenedConnections
) -> None:
    reader = StoreReader(database, threads=2)
    started = threading.Event()
    finish = threading.Event()

    def slow(conn: sqlite3.Connection) -> int:
        started.set()
        finish.wait(timeout=5)
        return int(conn.execute("SELECT 1").fetchone()[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.run, slow)
        await trio.to_thread.run_sync(started.wait, 5)
        reader.close()
        finish.set()
    assert opened.still_open() == 0
