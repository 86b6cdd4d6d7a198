"""Shutdown hands the writer every decided outcome and every tick the resolver holds.

A bet won by a tick that arrives just before the server stops must be stored as won, with its
deciding tick in the tick log — not left open, to be voided at the next start because the ticks
that decided it were dropped. (The supervisor stops ingest first, ends the tick channels and
waits for the resolver to hand everything over before it cancels the rest; this pins the
observable result. It does not force the race — a resolver still holding the outcome when the
stop comes — which would need a hook inside the resolver.)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from tests.e2e import outside, serving
from tests.test_e2e_journey import DEPOSIT, place_and_confirm


async def test_a_win_decided_just_before_shutdown_is_committed_with_its_tick(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as server:
        db_path = server.db_path
        player = server.player()
        await player.login()
        await player.deposit(DEPOSIT)
        async with player.ws() as ws:
            await ws.subscribe("account")
            cell, bet = await place_and_confirm(server, player, ws)
        await server.walk(cell["t_start"], outside(cell, server.market.row_height))
        touch = server.push(cell["price_lo"], cell["t_start"] + 5)
        server.running.stop.set()  # at once: no checkpoint for the resolver to settle first
        with trio.fail_after(15):
            await server.done.wait()

    conn = sqlite3.connect(db_path)
    try:
        status, decided_ts = conn.execute(
            "SELECT status, decided_ts FROM bets WHERE bet_id = ?", (bet["bet_id"],)
        ).fetchone()
        stored = conn.execute(
            "SELECT count(*) FROM ticks WHERE ts = ? AND price = ?", (touch.ts, touch.price)
        ).fetchone()[0]
    finally:
        conn.close()
    assert (status, decided_ts) == ("won", touch.ts)
    assert stored == 1
