"""A bet the ledger has decided reads as decided, however far behind the pending map is.

The edge keeps bets answered 202 in a pending map so GET can show them before their commit; the
ledger-sync actor drops each entry when it reaches that bet's commit event. That actor follows the
commits one by one and waits on the hot state for some of them (a Redis round trip per credit),
so under load it runs behind the answers: the SIGKILL campaign (`loadgen/benches/killloop.py`,
Redis hot
state) saw `GET /api/bets/{id}` answer `pending` for bets already answered `201 confirmed`. The
ledger is the authority: a read prefers it, and falls back to the pending entry only when the
ledger has not got the bet yet.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from tap.messages import Bet
from tests.e2e import pick_cell, serving


async def test_a_bet_answered_201_never_reads_pending_while_ledger_sync_lags(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as server:
        player = server.player()
        await player.login()
        await player.deposit(50_000_000)
        cell = await pick_cell(server, min_lead_ms=2000)
        body = player.signed_bet(cell["cell_id"], 1_000_000)
        r = await player.place(body, wait=5)
        assert r.status_code == 201, r.text
        bet = r.json()
        # ledger-sync has not reached this commit yet: the bet's pending entry is still there.
        server.running.services.pending.add(
            msgspec.convert({**bet, "status": "pending"}, Bet, from_attributes=False)
        )
        by_id = await player.get(f"/api/bets/{bet['bet_id']}")
        by_nonce = await player.get(f"/api/bets/by-nonce/{body['nonce']}")
        assert by_id.status_code == by_nonce.status_code == 200
        assert by_id.json()["status"] == by_nonce.json()["status"] == "confirmed"
