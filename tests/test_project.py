"""`messages.project`: the one conversion between a bet's shapes (issue 15: no hand copies)."""

from __future__ import annotations

import pytest

from tap.grid import CellId
from tap.messages import Bet, BetRequest, PlaceBet, WsPlaceBet, project
from tap.resolver import OpenBet

PLACE = PlaceBet(
    bet_id="b1", address="0x" + "a" * 40, cell_id="BTC-USD:3:7", symbol="BTC-USD", col=3, row=7,
    t_start=15_000, t_end=20_000, price_lo=7_000, price_hi=8_000, amount=100,
    multiplier_bps=25_000, nonce="n" * 16, accepted_at=1, timestamp=2, chain_id=31337,
    min_multiplier_bps=10_500, signature="ab" * 64,
)  # fmt: skip


def test_every_shared_field_moves_and_values_win() -> None:
    bet = PLACE.as_bet("rejected", "exposure_limit")
    for name in Bet.__struct_fields__:
        if name in PlaceBet.__struct_fields__:
            assert getattr(bet, name) == getattr(PLACE, name), name
    assert (bet.status, bet.reason, bet.confirmed_at) == ("rejected", "exposure_limit", None)


def test_earlier_sources_win_over_later_ones() -> None:
    frame = WsPlaceBet(
        cell_id="BTC-USD:3:7", amount=5, nonce="m" * 16, timestamp=9, chain_id=1,
        signature="cd" * 64, req_id="r1",
    )  # fmt: skip
    request = project(BetRequest, frame, PLACE)
    assert (request.amount, request.nonce, request.signature) == (5, "m" * 16, "cd" * 64)
    assert request.min_multiplier_bps == frame.min_multiplier_bps


def test_a_required_field_no_source_has_is_an_error() -> None:
    with pytest.raises(TypeError):
        project(PlaceBet, BetRequest(cell_id="x", amount=1, nonce="n" * 16, timestamp=1,
                                     chain_id=1, signature="s"))  # fmt: skip


def test_the_resolver_sees_the_same_bet_from_either_shape() -> None:
    from actors.resolver import open_bet
    from tap.config import MarketConfig

    market = MarketConfig(column_ms=5_000, row_height=1_000)
    assert CellId.parse(PLACE.cell_id).bounds(market).t_start == PLACE.t_start
    from_ledger = open_bet(PLACE, market)
    from_stream = open_bet(PLACE.as_bet("confirmed"), market)
    assert from_ledger == from_stream
    assert isinstance(from_ledger, OpenBet) and from_ledger.price_hi == PLACE.price_hi
