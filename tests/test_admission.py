"""The signed-request admission rules and the replay guard (API.md "Bets", "Money")."""

from __future__ import annotations

from typing import get_args

import msgspec
import pytest
from nacl.signing import SigningKey

from tap.admission import (
    BAD_SIGNATURE,
    BET_REFUSAL_ORDER,
    HOT_STATE_CHECKS,
    HTTP_STATUS,
    INVALID_REQUEST,
    REPLAYED_NONCE,
    SIGNED_REQUEST_CHECKS,
    STALE_TIMESTAMP,
    WRONG_CHAIN,
    AdmissionRules,
    SessionKey,
    bet_payload,
    normalize_address,
    timestamp_ok,
    valid_address,
    valid_nonce,
    verify_bet,
    verify_withdrawal,
    withdrawal_payload,
)
from tap.hotstate import AdmitReason
from tap.messages import BetRequest, WithdrawalRequest, WsPlaceBet
from tap.replay import ReplayGuard

CHAIN = 31337
SKEW = 30_000
NOW = 1_732_290_000_000
ADDRESS = "0x" + "ab" * 20
SIGNER = SigningKey(bytes(range(32)))
KEY = SessionKey(bytes(SIGNER.verify_key).hex())
OTHER_SIGNER = SigningKey(bytes(range(1, 33)))


def signed_bet(**change: object) -> BetRequest:
    """A bet signed by SIGNER for ADDRESS; `change` edits fields after signing (tampering)."""
    fields: dict[str, object] = {
        "cell_id": "BTC-USD:346458012:10012",
        "amount": 1_000_000,
        "nonce": "0f8fad5bd9cb469fa165",
        "timestamp": NOW,
        "chain_id": CHAIN,
        "min_multiplier_bps": 0,
    }
    payload = bet_payload(
        fields["chain_id"],  # type: ignore[arg-type]
        ADDRESS,
        fields["cell_id"],  # type: ignore[arg-type]
        fields["amount"],  # type: ignore[arg-type]
        fields["nonce"],  # type: ignore[arg-type]
        fields["timestamp"],  # type: ignore[arg-type]
        fields["min_multiplier_bps"],  # type: ignore[arg-type]
    )
    signature = SIGNER.sign(payload).signature.hex()
    # The constructor, not `msgspec.convert`: a malformed nonce must reach `verify_bet` (which
    # still checks it for values built in code) instead of stopping at the decoder's bounds.
    return BetRequest(**{**fields, "signature": signature, **change})  # type: ignore[arg-type]


def check(bet: BetRequest | WsPlaceBet, now: int = NOW, key: SessionKey = KEY) -> str | None:
    return verify_bet(
        now, chain_id=CHAIN, max_skew_ms=SKEW, session_key=key, address=ADDRESS, bet=bet
    )


# ── payloads ───────────────────────────────────────────────────────────────────────────────────


def test_bet_payload_is_the_api_string_with_the_address_lowercased() -> None:
    payload = bet_payload(
        1,
        "0xABCDEF0123456789abcdef0123456789ABCDEF01",
        "BTC-USD:346458012:10012",
        1000000,
        "0f8fad5bd9cb469fa165",
        1732290000000,
        0,
    )
    assert payload == (
        b"tap-bet|v1|1|0xabcdef0123456789abcdef0123456789abcdef01|BTC-USD:346458012:10012"
        b"|1000000|0f8fad5bd9cb469fa165|1732290000000|0"
    )


def test_withdrawal_payload_is_the_api_string() -> None:
    payload = withdrawal_payload(5, "0xAB" + "00" * 19, 250, "n" * 16, 7)
    assert payload == b"tap-withdraw|v1|5|0xab" + b"00" * 19 + b"|250|nnnnnnnnnnnnnnnn|7"


def test_payload_is_utf8() -> None:
    assert "é".encode() in bet_payload(1, ADDRESS, "é", 1, "n" * 16, 1, 0)


# ── formats ────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("nonce", "ok"),
    [
        ("a" * 15, False),
        ("a" * 16, True),
        ("aZ09_-" * 10 + "abcd", True),  # 64
        ("a" * 65, False),
        ("a" * 15 + "|", False),
        ("a" * 15 + " ", False),
        ("a" * 15 + ".", False),
        ("a" * 15 + "é", False),
        ("a" * 16 + "\n", False),
        ("", False),
    ],
)
def test_nonce_is_16_to_64_of_the_url_safe_alphabet(nonce: str, ok: bool) -> None:
    assert valid_nonce(nonce) is ok


def test_address_is_0x_and_40_hex_and_normalises_lowercase() -> None:
    assert valid_address("0x" + "aB" * 20)
    assert normalize_address("0x" + "aB" * 20) == "0x" + "ab" * 20
    for bad in ["0x" + "ab" * 19, "0x" + "ab" * 21, "ab" * 21, "0X" + "ab" * 20, "0x" + "zz" * 20]:
        assert not valid_address(bad)
        assert normalize_address(bad) is None


def test_timestamp_window_is_inclusive_in_both_directions() -> None:
    assert timestamp_ok(NOW, NOW - SKEW, SKEW)
    assert timestamp_ok(NOW, NOW + SKEW, SKEW)
    assert not timestamp_ok(NOW, NOW - SKEW - 1, SKEW)
    assert not timestamp_ok(NOW, NOW + SKEW + 1, SKEW)


# ── session keys ───────────────────────────────────────────────────────────────────────────────


def test_session_key_verifies_its_own_signature_only() -> None:
    payload = b"tap-bet|v1|..."
    good = SIGNER.sign(payload).signature.hex()
    assert KEY.verify(payload, good)
    assert KEY.verify(payload, good.upper())
    assert not KEY.verify(payload + b".", good)
    assert not KEY.verify(payload, OTHER_SIGNER.sign(payload).signature.hex())
    flipped = bytearray(bytes.fromhex(good))
    flipped[10] ^= 1
    assert not KEY.verify(payload, flipped.hex())


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "zz" * 64,
        "ab" * 63,
        "ab" * 65,
        "0x" + "ab" * 63,
        "ab  cd" + "ab" * 61,  # 128 characters, but fromhex skips whitespace: 63 bytes
        "é" * 128,
        "0" * 128,
    ],
)
def test_session_key_returns_false_never_raises_on_malformed_signatures(signature: str) -> None:
    assert KEY.verify(b"payload", signature) is False


@pytest.mark.parametrize(
    "public_key_hex",
    [
        "00" * 32,  # the identity point: small order
        "01" + "00" * 31,  # also small order
        "ff" * 32,  # does not decode to a point
        "ab" * 31,
        "ab" * 33,
        "zz" * 32,
        "",
    ],
)
def test_session_key_refuses_unusable_public_keys(public_key_hex: str) -> None:
    assert SessionKey.from_hex(public_key_hex) is None
    with pytest.raises(ValueError, match="session key"):
        SessionKey(public_key_hex)


def test_session_key_normalises_hex_and_compares_by_key() -> None:
    upper = SessionKey(KEY.hex.upper())
    assert upper.hex == KEY.hex
    assert upper == KEY
    assert hash(upper) == hash(KEY)
    assert SessionKey(bytes(OTHER_SIGNER.verify_key).hex()) != KEY


# ── the stateless decision ────────────────────────────────────────────────────────────────────


def test_a_fresh_signed_bet_passes() -> None:
    assert check(signed_bet()) is None


def test_a_websocket_place_bet_is_checked_the_same_way() -> None:
    bet = signed_bet()
    frame = WsPlaceBet(req_id="1", **msgspec.structs.asdict(bet))
    assert check(frame) is None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"cell_id": "BTC-USD:346458012:10013"}, BAD_SIGNATURE),
        ({"amount": 1_000_001}, BAD_SIGNATURE),
        ({"nonce": "0f8fad5bd9cb469fa166"}, BAD_SIGNATURE),
        ({"timestamp": NOW + 1}, BAD_SIGNATURE),
        ({"min_multiplier_bps": 10_500}, BAD_SIGNATURE),
        ({"chain_id": 1}, WRONG_CHAIN),
        ({"nonce": "short"}, INVALID_REQUEST),
    ],
)
def test_every_tampered_field_is_refused(change: dict[str, object], code: str) -> None:
    assert check(signed_bet(**change)) == code


def test_a_bet_signed_for_another_address_does_not_verify_here() -> None:
    bet = signed_bet()
    assert (
        verify_bet(
            NOW,
            chain_id=CHAIN,
            max_skew_ms=SKEW,
            session_key=KEY,
            address="0x" + "cd" * 20,
            bet=bet,
        )
        == BAD_SIGNATURE
    )


def test_a_bet_signed_by_another_key_is_bad_signature() -> None:
    assert check(signed_bet(), key=SessionKey(bytes(OTHER_SIGNER.verify_key).hex())) == (
        BAD_SIGNATURE
    )


def test_stale_in_both_directions_and_inclusive_at_the_edge() -> None:
    bet = signed_bet()
    assert check(bet, now=NOW + SKEW) is None
    assert check(bet, now=NOW - SKEW) is None
    assert check(bet, now=NOW + SKEW + 1) == STALE_TIMESTAMP
    assert check(bet, now=NOW - SKEW - 1) == STALE_TIMESTAMP


def test_cheap_checks_answer_before_the_signature() -> None:
    """A forged request on the wrong chain is told wrong_chain: no signature work was done."""
    assert check(signed_bet(chain_id=1, signature="00" * 64)) == WRONG_CHAIN
    assert check(signed_bet(signature="00" * 64), now=NOW + SKEW + 1) == STALE_TIMESTAMP
    assert check(signed_bet(nonce="x", chain_id=1)) == INVALID_REQUEST


def signed_withdrawal(payload_maker: str = "withdraw") -> WithdrawalRequest:
    nonce, amount = "w" * 16, 500
    if payload_maker == "withdraw":
        payload = withdrawal_payload(CHAIN, ADDRESS, amount, nonce, NOW)
    else:
        payload = bet_payload(CHAIN, ADDRESS, "x", amount, nonce, NOW, 0)
    return WithdrawalRequest(
        amount=amount,
        nonce=nonce,
        timestamp=NOW,
        chain_id=CHAIN,
        signature=SIGNER.sign(payload).signature.hex(),
    )


def test_withdrawals_verify_their_own_payload_and_never_a_bet_signature() -> None:
    def run(w: WithdrawalRequest) -> str | None:
        return verify_withdrawal(
            NOW, chain_id=CHAIN, max_skew_ms=SKEW, session_key=KEY, address=ADDRESS, withdrawal=w
        )

    assert run(signed_withdrawal()) is None
    assert run(signed_withdrawal("bet")) == BAD_SIGNATURE


# ── the whole decision with the replay guard ──────────────────────────────────────────────────


def test_a_replayed_bet_is_refused_while_its_timestamp_is_in_the_window() -> None:
    rules = AdmissionRules(chain_id=CHAIN, max_skew_ms=SKEW)
    bet = signed_bet()  # first seen at NOW - SKEW: remembered until NOW + SKEW, inclusive
    assert rules.check_bet(NOW - SKEW, KEY, ADDRESS, bet) is None
    assert rules.check_bet(NOW, KEY, ADDRESS, bet) == REPLAYED_NONCE
    assert rules.check_bet(NOW + SKEW, KEY, ADDRESS, bet) == REPLAYED_NONCE
    assert rules.check_bet(NOW + SKEW + 1, KEY, ADDRESS, bet) == STALE_TIMESTAMP


def test_a_refused_request_does_not_burn_the_nonce() -> None:
    rules = AdmissionRules(chain_id=CHAIN, max_skew_ms=SKEW)
    assert rules.check_bet(NOW, KEY, ADDRESS, signed_bet(signature="00" * 64)) == BAD_SIGNATURE
    assert rules.check_bet(NOW, KEY, ADDRESS, signed_bet()) is None


def test_a_released_nonce_may_be_retried() -> None:
    rules = AdmissionRules(chain_id=CHAIN, max_skew_ms=SKEW)
    bet = signed_bet()
    assert rules.check_bet(NOW, KEY, ADDRESS, bet) is None
    rules.release(ADDRESS, bet.nonce)
    assert rules.check_bet(NOW + 1, KEY, ADDRESS, bet) is None


def test_bets_and_withdrawals_share_one_nonce_namespace() -> None:
    rules = AdmissionRules(chain_id=CHAIN, max_skew_ms=SKEW)
    w = signed_withdrawal()
    assert rules.check_withdrawal(NOW, KEY, ADDRESS, w) is None
    assert rules.check_withdrawal(NOW, KEY, ADDRESS, w) == REPLAYED_NONCE
    assert rules.check_bet(NOW, KEY, ADDRESS, signed_bet(nonce=w.nonce)) == BAD_SIGNATURE


# ── reason codes ───────────────────────────────────────────────────────────────────────────────


def test_every_refusal_has_its_api_status_and_the_order_holds_each_code_once() -> None:
    assert set(HTTP_STATUS) == set(BET_REFUSAL_ORDER)
    assert len(set(BET_REFUSAL_ORDER)) == len(BET_REFUSAL_ORDER)
    assert HTTP_STATUS[REPLAYED_NONCE] == 409
    assert HTTP_STATUS["rate_limited"] == 429
    assert HTTP_STATUS["stale_timestamp"] == 401
    positions = [BET_REFUSAL_ORDER.index(c) for c in SIGNED_REQUEST_CHECKS + HOT_STATE_CHECKS]
    assert positions == sorted(positions)


def test_hot_state_codes_are_the_hot_state_protocol_reasons() -> None:
    assert set(HOT_STATE_CHECKS) == set(get_args(AdmitReason))


# ── the replay guard ───────────────────────────────────────────────────────────────────────────


def test_replay_guard_remembers_at_least_memory_ms_then_forgets() -> None:
    guard = ReplayGuard(60_000)
    assert guard.check_and_remember("a", "n", 1_000)
    assert not guard.check_and_remember("a", "n", 1_000 + 60_000)  # inclusive: still remembered
    assert guard.check_and_remember("b", "n", 1_000)  # keys are separate
    assert guard.check_and_remember("a", "n", 1_000 + 60_000 + guard.bucket_ms + 1)


def test_replay_guard_forget_makes_a_pair_new_again_and_survives_the_old_bucket() -> None:
    guard = ReplayGuard(8_000)  # bucket_ms = 1000
    assert guard.check_and_remember("a", "n", 0)
    guard.forget("a", "n")
    assert not guard.seen("a", "n")
    assert guard.check_and_remember("a", "n", 5_000)
    # the first bucket expires at 1000 + 8000; the re-seen pair must outlive it
    assert not guard.check_and_remember("a", "n", 9_500)
    assert guard.seen("a", "n")


def test_replay_guard_memory_follows_recent_traffic_only() -> None:
    guard = ReplayGuard(1_000)
    for t in range(0, 100_000, 10):
        assert guard.check_and_remember("a", f"n{t}", t)
        assert len(guard) <= (1_000 + guard.bucket_ms) // 10 + 1


def test_replay_guard_refuses_a_non_positive_memory() -> None:
    with pytest.raises(ValueError, match="memory_ms"):
        ReplayGuard(0)


def test_replay_guard_keeps_pairs_when_time_steps_back() -> None:
    guard = ReplayGuard(1_000)
    assert guard.check_and_remember("a", "x", 10_000)
    assert guard.check_and_remember("a", "y", 5_000)  # filed with the newest bucket
    assert not guard.check_and_remember("a", "y", 10_900)
