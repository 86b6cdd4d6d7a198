"""Issue 9 defect 11 through the real server: a bet archived (it left the hot database), then a
new, validly signed bet reusing its nonce. It used to be accepted with the archived bet's own
deterministic bet_id; now it is `409 replayed_nonce`, and moves no money.

The server restarts in between: a nonce is remembered by the hot state only for 2 × max_skew_ms,
so past that (here: forgotten by the restart) only the ledger can still know it was used."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.e2e import outside, pick_cell, placeable_cells, serving

STAKE = 1_000_000


async def test_a_nonce_whose_bet_was_archived_is_refused_as_a_replay(tmp_path: Path) -> None:
    async with serving(tmp_path, archive__after_days=0) as server:
        player = server.player()
        await player.login()
        await player.deposit(10 * STAKE)
        cell = await pick_cell(server)
        first = player.signed_bet(cell["cell_id"], STAKE)
        r = await player.place(first, wait=5)
        assert r.status_code == 201, r.text
        bet_id = r.json()["bet_id"]
        await server.walk(cell["t_end"], outside(cell, server.market.row_height), step_ms=250)
        with trio.fail_after(20):
            while True:
                if (await player.get(f"/api/bets/{bet_id}")).json()["status"] == "lost":
                    break
                await trio.sleep(0.05)
            # Archivable once its resolution time is in the past (after_days = 0).
            while True:
                r = await server.admin("/admin/archive", {})
                assert r.status_code == 200, r.text
                if (await player.get(f"/api/bets/{bet_id}")).status_code == 404:
                    break
                await trio.sleep(0.2)
        wallet = player.account

    async with serving(tmp_path, archive__after_days=0) as server:
        player = server.player()
        player.account, player.address = wallet, wallet.address.lower()
        await player.login()
        before = {k: v for k, v in (await player.balance()).items() if k != "as_of"}
        assert before["available"] == 9 * STAKE

        other = placeable_cells(await server.grid(), after_ts=server.now() + 2000)[0]
        again = player.signed_bet(other["cell_id"], STAKE, nonce=first["nonce"])
        r = await player.place(again, wait=5)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "replayed_nonce"
        assert {k: v for k, v in (await player.balance()).items() if k != "as_of"} == before
        assert (await player.get(f"/api/bets/{bet_id}")).status_code == 404  # nothing stored
