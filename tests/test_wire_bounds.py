"""Every field a client sends is bounded at decoding (API.md v1.1 "Bounds"; issue 9 defect 1).

The reproduction of defect 1: a signed bet with `min_multiplier_bps = -9223372036854775809` used
to pass admission and kill the writer with an `OverflowError` at the INSERT. It is now a
`400 invalid_request` naming the field (an `error` frame over WS), and the server keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from tap.messages import BetRequest as BetBody
from tap.messages import (
    ChallengeRequest,
    ClientFrame,
    CreditRequest,
    DepositRequest,
    LoginRequest,
    Wire,
    WithdrawalRequest,
)
from tap.store import read
from tests.e2e import Server, connect_ws, new_nonce, pick_cell

HUGE = -9_223_372_036_854_775_809  # below -2⁶³: not even bindable to SQLite
MAX = 2**53 - 1

GOOD_BET: dict[str, Any] = {
    "cell_id": "BTC-USD:1:2",
    "amount": 1_000_000,
    "nonce": "n" * 16,
    "timestamp": 1_732_290_000_000,
    "chain_id": 1,
    "signature": "ab" * 64,
    "min_multiplier_bps": 0,
}
GOOD_WITHDRAWAL = {k: v for k, v in GOOD_BET.items() if k not in ("cell_id", "min_multiplier_bps")}

# (struct, a valid body, field, a value out of its bounds)
CASES: list[tuple[type[Wire], dict[str, Any], str, Any]] = [
    (BetBody, GOOD_BET, "min_multiplier_bps", HUGE),
    (BetBody, GOOD_BET, "min_multiplier_bps", -1),
    (BetBody, GOOD_BET, "min_multiplier_bps", 2**63),
    (BetBody, GOOD_BET, "amount", 0),
    (BetBody, GOOD_BET, "amount", MAX + 1),
    (BetBody, GOOD_BET, "amount", -(2**64)),
    (BetBody, GOOD_BET, "timestamp", -1),
    (BetBody, GOOD_BET, "timestamp", MAX + 1),
    (BetBody, GOOD_BET, "chain_id", 0),
    (BetBody, GOOD_BET, "chain_id", 2**64),
    (BetBody, GOOD_BET, "nonce", "short"),
    (BetBody, GOOD_BET, "nonce", "x" * 65),
    (BetBody, GOOD_BET, "nonce", "bad|nonce-chars!!"),
    (BetBody, GOOD_BET, "cell_id", "C" * 129),
    (BetBody, GOOD_BET, "signature", "ab" * 10_000),
    (WithdrawalRequest, GOOD_WITHDRAWAL, "amount", MAX + 1),
    (WithdrawalRequest, GOOD_WITHDRAWAL, "timestamp", HUGE),
    (WithdrawalRequest, GOOD_WITHDRAWAL, "chain_id", -1),
    (WithdrawalRequest, GOOD_WITHDRAWAL, "nonce", "?" * 20),
    (DepositRequest, {"amount": 1}, "amount", 2**63),
    (DepositRequest, {"amount": 1}, "amount", 0),
    (CreditRequest, {"address": "0x" + "a" * 40, "amount": -5, "reason": "x"}, "amount", -(2**53)),
    (CreditRequest, {"address": "0x" + "a" * 40, "amount": 5, "reason": "x"}, "reason", "r" * 300),
    (CreditRequest, {"address": "0x" + "a" * 40, "amount": 5, "reason": "x"}, "address", "0" * 99),
    (ChallengeRequest, {"address": "0x" + "a" * 40}, "address", "a" * 10_000),
    (LoginRequest, {"message": "m", "signature": "s"}, "message", "m" * 5000),
    (LoginRequest, {"message": "m", "signature": "s"}, "signature", "s" * 300),
]


@pytest.mark.parametrize(("kind", "good", "field", "value"), CASES)
def test_an_out_of_bounds_field_is_refused_naming_it(
    kind: type[Wire], good: dict[str, Any], field: str, value: Any
) -> None:
    msgspec.json.decode(json.dumps(good).encode(), type=kind)  # the base body is valid
    with pytest.raises(msgspec.ValidationError, match=rf"\$\.{field}"):
        msgspec.json.decode(json.dumps({**good, field: value}).encode(), type=kind)


def test_the_bounds_themselves_are_accepted() -> None:
    edge = {**GOOD_BET, "amount": MAX, "timestamp": MAX, "chain_id": MAX, "nonce": "Z" * 64}
    bet = msgspec.json.decode(json.dumps(edge).encode(), type=BetBody)
    assert (bet.amount, bet.timestamp, bet.chain_id) == (MAX, MAX, MAX)
    credit = {"address": "0x" + "a" * 40, "amount": -MAX, "reason": ""}
    assert msgspec.json.decode(json.dumps(credit).encode(), type=CreditRequest).amount == -MAX


WS_CASES: list[tuple[dict[str, Any], str]] = [
    ({"type": "place_bet", "req_id": "r", **GOOD_BET, "min_multiplier_bps": HUGE}, "min_multi"),
    ({"type": "place_bet", "req_id": "r" * 65, **GOOD_BET}, "req_id"),
    ({"type": "place_bet", "req_id": "r", **GOOD_BET, "amount": 2**70}, "amount"),
    ({"type": "ping", "req_id": "p" * 65}, "req_id"),
    ({"type": "auth", "token": "t" * 257}, "token"),
    ({"type": "subscribe", "channels": ["grid:BTC-USD"] * 65}, "channels"),
    ({"type": "subscribe", "channels": ["c" * 65]}, "channels"),
    ({"type": "unsubscribe", "channels": ["prices:BTC-USD"] * 1000}, "channels"),
]


@pytest.mark.parametrize(("frame", "field"), WS_CASES)
def test_an_out_of_bounds_ws_frame_is_refused_naming_the_field(
    frame: dict[str, Any], field: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=field):
        msgspec.json.decode(json.dumps(frame).encode(), type=ClientFrame)


@pytest.mark.parametrize(
    "cursor",
    ["x" * 129, read.encode_cursor(2**63), read.encode_cursor(10**400)[:128], "wzk"],
)
def test_a_cursor_beyond_its_bounds_is_invalid_not_an_overflow(cursor: str) -> None:
    with pytest.raises(read.InvalidCursor):
        read.decode_cursor(cursor)


# ── through a real server ─────────────────────────────────────────────────────────────────────


async def test_the_overflowing_bet_is_a_400_and_the_server_keeps_confirming(
    server: Server,
) -> None:
    player = server.player()
    await player.login()
    await player.deposit(100_000_000)
    cell = await pick_cell(server, min_lead_ms=5000)
    hostile = player.signed_bet(cell["cell_id"], 1_000_000, min_multiplier_bps=HUGE)
    r = await player.place(hostile, wait=5)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "min_multiplier_bps" in r.json()["error"]["message"]

    # Above the market's own max_multiplier_bps: 400 too (the decoder knows only the ceiling).
    too_high = server.market.max_multiplier_bps + 1
    r = await player.place(cell_id=cell["cell_id"], amount=1_000_000, min_multiplier_bps=too_high)
    assert r.status_code == 400 and "min_multiplier_bps" in r.json()["error"]["message"], r.text

    async with connect_ws(server) as ws:
        assert player.token is not None
        await ws.auth(player.token)
        await ws.send({"type": "place_bet", "req_id": "evil", **hostile, "nonce": new_nonce()})
        err = await ws.next_of_type("error")
        assert err["error"]["code"] == "invalid_request"
        assert "min_multiplier_bps" in err["error"]["message"]
        assert (await ws.ping())["type"] == "pong"

    # The writer is alive: the same player's honest bet on that cell is confirmed.
    ok = await player.place(cell_id=cell["cell_id"], amount=1_000_000, wait=5)
    assert ok.status_code == 201, ok.text
    assert ok.json()["status"] == "confirmed"
