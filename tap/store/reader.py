"""Read-only access to the ledger database for the edge, off the event loop.

SQLite under WAL lets readers run beside the one writer without blocking it. Each worker thread
keeps its own read-only connection (a `sqlite3.Connection` is not shared between concurrent
threads); queries run through `trio.to_thread.run_sync` with a small `CapacityLimiter` so a burst
of GETs cannot starve the writer's thread of the machine.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from tap.messages import Bet, LedgerEntry, Tick
from tap.store import db

T = TypeVar("T")


class StoreReader:
    def __init__(self, db_path: str | Path, *, threads: int = 4) -> None:
        self._path = str(db_path)
        self._local = threading.local()
        self._limiter = trio.CapacityLimiter(threads)
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = db.open_connection(self._path, read_only=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(lambda: fn(self._conn()), limiter=self._limiter)

    async def bet(self, bet_id: str) -> Bet | None:
        return await self.run(lambda c: db.get_bet(c, bet_id))

    async def bet_by_nonce(self, address: str, nonce: str) -> Bet | None:
        return await self.run(lambda c: db.get_bet_by_nonce(c, address, nonce))

    async def bets(
        self, address: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Bet], str | None]:
        page = await self.run(
            lambda c: db.list_bets(c, address, status=status, limit=limit, cursor=cursor)
        )
        return page.items, page.next_cursor

    async def balance(self, address: str) -> tuple[int, int]:
        acct = await self.run(lambda c: db.get_balance(c, address))
        return acct.available, acct.locked

    async def ledger(
        self, address: str, limit: int, cursor: str | None
    ) -> tuple[list[LedgerEntry], str | None]:
        page = await self.run(lambda c: db.ledger_page(c, address, limit=limit, cursor=cursor))
        return page.items, page.next_cursor

    async def ticks(
        self, symbol: str, start: int, end: int, limit: int
    ) -> tuple[list[Tick], int | None]:
        page = await self.run(lambda c: db.ticks_range(c, symbol, start, end, limit=limit))
        return page.ticks, page.next_from

    async def ping(self) -> bool:
        try:
            await self.run(lambda c: c.execute("SELECT 1").fetchone())
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
