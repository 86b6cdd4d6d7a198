"""A player's whole journey through the real server: login, deposit, bets that win, lose and void,
the ledger that explains the balance, a withdrawal, and the read endpoints.

Resolution is driven by ticks pushed with explicit timestamps on the manual feed (they may run
ahead of the wall clock), never by waiting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.e2e import Player, Server, outside, pick_cell, serving

DEPOSIT = 100_000_000
STAKE = 2_000_000


async def place_and_confirm(
    server: Server, player: Player, ws: Any, stake: int = STAKE
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Place a bet on the earliest open cell ahead of the feed; return (cell, confirmed bet).
    The `bet_confirmed` frame carries the balance after it (kept in `bet["_balance"]`)."""
    cell = await pick_cell(server)
    r = await player.place(cell_id=cell["cell_id"], amount=stake)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "pending"
    assert accepted["cell_id"] == cell["cell_id"]
    assert accepted["amount"] == stake
    # The grid may have been re-priced since it was read (refresh_ms): the 202 names the quote.
    assert accepted["multiplier_bps"] >= server.market.min_multiplier_bps
    frame = await ws.next_of_type(
        "bet_confirmed", where=lambda f: f["bet"]["bet_id"] == accepted["bet_id"]
    )
    bet = frame["bet"]
    bet["_balance"] = frame["balance"]
    assert bet["status"] == "confirmed"
    assert bet["multiplier_bps"] == accepted["multiplier_bps"]
    assert bet["confirmed_at"] is not None
    return cell, bet


async def resolved(ws: Any, bet_id: str) -> dict[str, Any]:
    """The `bet_resolved` frame's bet, with the balance after it in `bet["_balance"]`."""
    frame = await ws.next_of_type("bet_resolved", where=lambda f: f["bet"]["bet_id"] == bet_id)
    bet: dict[str, Any] = frame["bet"]
    bet["_balance"] = frame["balance"]
    return bet


async def test_journey_win_loss_void_then_withdraw_and_the_ledger_explains_the_balance(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, feed__max_gap_ms=500) as server:
        row = server.market.row_height
        player = server.player()
        session = await player.login()
        assert session["address"] == player.address
        assert session["session_key"] == player.session_hex

        entry = await player.deposit(DEPOSIT)
        assert entry["kind"] == "deposit" and entry["amount"] == DEPOSIT
        assert (await player.balance())["available"] == DEPOSIT

        async with player.ws() as ws:
            await ws.subscribe("account", f"prices:{server.symbol}")

            # ── a win: a tick inside the window touches the band ──
            cell, won = await place_and_confirm(server, player, ws)
            # one frame per committed bet: the balance travels inside it, no `balance` frame
            assert won["_balance"] == {"available": DEPOSIT - STAKE, "locked": STAKE}
            got = await player.get(f"/api/bets/{won['bet_id']}")
            assert got.status_code == 200 and got.json()["status"] == "confirmed"
            await server.walk(cell["t_start"], outside(cell, row))
            touch = server.push(cell["price_hi"], cell["t_start"] + 10)  # the top line counts
            bet = await resolved(ws, won["bet_id"])
            payout = STAKE * won["multiplier_bps"] // 10_000
            assert bet["status"] == "won"
            assert bet["payout"] == payout
            assert bet["decided_by"] == {"ts": touch.ts, "price": touch.price}

            # ── a loss: the column ends with no touch ──
            cell, lost = await place_and_confirm(server, player, ws)
            await server.walk(cell["t_end"], outside(cell, row), step_ms=250)
            bet = await resolved(ws, lost["bet_id"])
            assert bet["status"] == "lost"
            assert bet["payout"] == 0
            assert bet["decided_by"]["ts"] >= cell["t_end"]

            # ── a void: a feed gap longer than max_gap_ms inside the window ──
            cell, voided = await place_and_confirm(server, player, ws)
            await server.walk(cell["t_start"] - 1, outside(cell, row))
            server.push(outside(cell, row), cell["t_end"] + 100)  # silence over the window
            bet = await resolved(ws, voided["bet_id"])
            assert bet["status"] == "void"
            assert bet["payout"] == STAKE
            assert bet["decided_by"]["ts"] == cell["t_end"] + 100

            available = DEPOSIT - 3 * STAKE + payout + STAKE
            assert bet["_balance"] == {"available": available, "locked": 0}
            assert ws.frames_of(["balance"]) == []

        # ── balance and ledger agree, entry by entry (README's money model) ──
        body = await player.balance()
        assert (body["available"], body["locked"]) == (available, 0)
        entries = sorted(await player.ledger(), key=lambda e: e["entry_id"])
        moves = [(e["kind"], e["amount"], e["locked_delta"]) for e in entries]
        assert moves == [
            ("deposit", DEPOSIT, 0),
            ("stake", -STAKE, STAKE),
            ("payout", payout, -STAKE),
            ("stake", -STAKE, STAKE),
            ("payout", 0, -STAKE),
            ("stake", -STAKE, STAKE),
            ("refund", STAKE, -STAKE),
        ]
        running = 0
        for e in entries:
            running += e["amount"]
            assert e["balance_after"] == running
        assert sum(e["amount"] + e["locked_delta"] for e in entries) == available

        # ── a withdrawal: 201 with its ledger entry ──
        r = await player.withdraw(5_000_000)
        assert r.status_code == 201, r.text
        withdrawal = r.json()["entry"]
        assert withdrawal["kind"] == "withdrawal"
        assert withdrawal["amount"] == -5_000_000
        assert withdrawal["balance_after"] == available - 5_000_000
        assert (await player.balance())["available"] == available - 5_000_000

        # ── Prefer: wait=5 answers with the committed bet ──
        cell = await pick_cell(server)
        r = await player.place(cell_id=cell["cell_id"], amount=STAKE, wait=5)
        assert r.status_code == 201, r.text
        waited = r.json()
        assert waited["status"] == "confirmed"
        assert waited["confirmed_at"] is not None
        assert r.headers["Preference-Applied"] == "wait=5"
        by_nonce = await player.get(f"/api/bets/by-nonce/{waited['nonce']}")
        assert by_nonce.status_code == 200
        assert by_nonce.json()["bet_id"] == waited["bet_id"]

        # ── the bet list pages with a cursor, each bet once ──
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            r = await player.get("/api/bets", **params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["items"]) <= 2
            seen += [b["bet_id"] for b in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(
            [won["bet_id"], lost["bet_id"], voided["bet_id"], waited["bet_id"]]
        )
        r = await player.get("/api/bets", status="won")
        assert [b["bet_id"] for b in r.json()["items"]] == [won["bet_id"]]

        # ── another player cannot read this player's bet ──
        other = server.player()
        await other.login()
        r = await other.get(f"/api/bets/{won['bet_id']}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"


async def test_prices_endpoint_returns_the_ticks_the_feed_delivered(server: Server) -> None:
    start = server.feed_ts
    pushed = [server.push(server.last_price + 10 * i, start + 100 * i) for i in range(1, 6)]
    await server.settled_feed()
    client = server.http()
    window = {"from": start + 1, "to": pushed[-1].ts + 1}
    with trio.fail_after(5):  # the resolver hands ticks to the writer in the background
        while True:
            r = await client.get(f"/api/prices/{server.symbol}", params=window)
            assert r.status_code == 200, r.text
            if len(r.json()["ticks"]) == len(pushed):
                break
            await trio.sleep(0.01)
    body = r.json()
    assert [(t["ts"], t["price"]) for t in body["ticks"]] == [(t.ts, t.price) for t in pushed]
    r = await client.get(
        f"/api/prices/{server.symbol}",
        params={"from": start + 1, "to": pushed[-1].ts + 1, "limit": 2},
    )
    page = r.json()
    assert [t["ts"] for t in page["ticks"]] == [pushed[0].ts, pushed[1].ts]
    assert page["next"] is not None
    r = await client.get("/api/prices/NOPE-USD")
    assert r.status_code == 404
