"""Read-only access to the ledger database for the edge, off the event loop.

SQLite under WAL lets readers run beside the one writer without blocking it. Queries run through
`trio.to_thread.run_sync` with a small `CapacityLimiter` so a burst of GETs cannot starve the
writer's thread of the machine.

Connections live in a small pool, not one per thread: trio retires a worker thread after ~10 s
idle and starts fresh ones on the next burst, so a per-thread connection would be orphaned (file
handles and all) at every quiet spell. The limiter bounds how many queries run at once to
`threads`, so the pool never needs more than `threads` connections; each is opened on first need,
lent to exactly one query at a time (a `sqlite3.Connection` is not shared between concurrent
threads), returned to the free list afterwards, and closed by `close()`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from tap.messages import Bet, LedgerEntry, Tick
from tap.store import connect, read

T = TypeVar("T")


class StoreReader:
    def __init__(self, db_path: str | Path, *, threads: int = 4) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._path = str(db_path)
        self._limiter = trio.CapacityLimiter(threads)
        # Guards the two lists below; taken only for list operations, never around a query.
        self._lock = threading.Lock()
        self._free: list[sqlite3.Connection] = []
        self._open: list[sqlite3.Connection] = []
        self._closed = False

    @property
    def open_connections(self) -> int:
        """How many connections the pool holds right now (at most `threads`)."""
        with self._lock:
            return len(self._open)

    def _borrow(self) -> sqlite3.Connection:
        """A connection for one query; called in a worker thread while holding a limiter token.

        The limiter lets at most `threads` queries in at once and every one of them returns its
        connection before releasing the token, so when the free list is empty fewer than
        `threads` connections exist and opening one more keeps the pool within bounds.
        """
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("StoreReader is closed")
            if self._free:
                return self._free.pop()
        conn = connect.open_connection(self._path, read_only=True)
        with self._lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError("StoreReader is closed")
            self._open.append(conn)
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._open:
                self._free.append(conn)
                return
        # `close()` ran while this query was in flight: it dropped the connection from the pool
        # (it cannot close a connection another thread is using), so close it here.
        conn.close()

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._borrow()
        try:
            return fn(conn)
        finally:
            self._give_back(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    async def bet(self, bet_id: str) -> Bet | None:
        return await self.run(lambda c: read.get_bet(c, bet_id))

    async def bet_by_nonce(self, address: str, nonce: str) -> Bet | None:
        return await self.run(lambda c: read.get_bet_by_nonce(c, address, nonce))

    async def bets(
        self, address: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Bet], str | None]:
        page = await self.run(
            lambda c: read.list_bets(c, address, status=status, limit=limit, cursor=cursor)
        )
        return page.items, page.next_cursor

    async def balance(self, address: str) -> tuple[int, int]:
        acct = await self.run(lambda c: read.get_balance(c, address))
        return acct.available, acct.locked

    async def ledger(
        self, address: str, limit: int, cursor: str | None
    ) -> tuple[list[LedgerEntry], str | None]:
        page = await self.run(lambda c: read.ledger_page(c, address, limit=limit, cursor=cursor))
        return page.items, page.next_cursor

    async def ticks(
        self, symbol: str, start: int, end: int, limit: int
    ) -> tuple[list[Tick], int | None]:
        page = await self.run(lambda c: read.ticks_range(c, symbol, start, end, limit=limit))
        return page.ticks, page.next_from

    async def ping(self) -> bool:
        try:
            await self.run(lambda c: c.execute("SELECT 1").fetchone())
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        """Close every idle connection now; one still lent out closes when its query returns."""
        with self._lock:
            self._closed = True
            idle, self._free = self._free, []
            self._open.clear()
        for conn in idle:
            conn.close()
