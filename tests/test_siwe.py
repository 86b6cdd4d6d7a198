"""Sign-In with Ethereum: the message we write, how strictly we read it, and who signed it."""

from __future__ import annotations

import msgspec
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from nacl.signing import SigningKey

from tap import siwe
from tap.siwe import SiweFormatError, SiweMessage

DOMAIN = "127.0.0.1:8080"
URI = "http://127.0.0.1:8080"
CHAIN = 31337
ISSUED = 1_732_290_000_123
EXPIRES = ISSUED + 300_000
SESSION_HEX = bytes(SigningKey(bytes(range(32))).verify_key).hex()

# The example of EIP-4361 itself, character for character.
EIP_EXAMPLE = """example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""


@pytest.fixture(scope="module")
def wallet() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


def login_text(wallet: LocalAccount, **change: object) -> str:
    base: dict[str, object] = {
        "domain": DOMAIN,
        "address": wallet.address.lower(),
        "uri": URI,
        "chain_id": CHAIN,
        "nonce": "a1b2c3d4e5f6a7b8",
        "issued_at_ms": ISSUED,
        "expiration_ms": EXPIRES,
        "session_key_hex": SESSION_HEX,
    }
    return siwe.login_message(**{**base, **change})  # type: ignore[arg-type]


def sign(wallet: LocalAccount, text: str) -> str:
    signed = Account.sign_message(encode_defunct(text=text), wallet.key)
    return "0x" + bytes(signed.signature).hex()


def login(text: str, signature: str, now: int = ISSUED + 1) -> siwe.LoginCheck:
    return siwe.check_login(text, signature, domain=DOMAIN, uri=URI, chain_id=CHAIN, now_ms=now)


# ── build, sign, recover ───────────────────────────────────────────────────────────────────────


def test_built_message_signed_by_a_real_wallet_recovers_that_wallet(wallet: LocalAccount) -> None:
    text = login_text(wallet)
    assert siwe.recover_address(text, sign(wallet, text)) == wallet.address.lower()


def test_built_message_has_the_eip_4361_layout(wallet: LocalAccount) -> None:
    lines = login_text(wallet).split("\n")
    assert lines[0] == f"{DOMAIN} wants you to sign in with your Ethereum account:"
    assert lines[1] == wallet.address  # EIP-55 checksummed
    assert lines[2] == "" and lines[4] == ""
    assert lines[5:11] == [
        f"URI: {URI}",
        "Version: 1",
        f"Chain ID: {CHAIN}",
        "Nonce: a1b2c3d4e5f6a7b8",
        "Issued At: 2024-11-22T15:40:00.123Z",
        "Expiration Time: 2024-11-22T15:45:00.123Z",
    ]
    assert lines[11:] == ["Resources:", f"- urn:tap:session-key:ed25519:{SESSION_HEX}"]


def test_parse_reads_back_every_field_and_renders_the_same_text(wallet: LocalAccount) -> None:
    text = login_text(wallet)
    msg = siwe.parse(text)
    assert msg.domain == DOMAIN
    assert msg.address == wallet.address
    assert msg.uri == URI
    assert msg.chain_id == CHAIN
    assert msg.nonce == "a1b2c3d4e5f6a7b8"
    assert msg.issued_at_ms == ISSUED
    assert msg.expiration_ms == EXPIRES
    assert msg.not_before_ms is None
    assert msg.resources == (f"urn:tap:session-key:ed25519:{SESSION_HEX}",)
    assert msg.to_text() == text


def test_the_eip_example_parses_and_renders_back_exactly() -> None:
    msg = siwe.parse(EIP_EXAMPLE)
    assert msg.statement == "I accept the ExampleOrg Terms of Service: https://example.com/tos"
    assert msg.issued_at_ms == 1_633_019_124_000
    assert len(msg.resources) == 2
    assert msg.to_text() == EIP_EXAMPLE


def test_a_login_that_checks_out_yields_the_message_and_session_key(wallet: LocalAccount) -> None:
    text = login_text(wallet)
    result = login(text, sign(wallet, text))
    assert result.error is None
    assert result.message is not None and result.message.address == wallet.address
    assert result.session_key is not None and result.session_key.hex == SESSION_HEX


def test_the_signature_is_accepted_with_or_without_0x(wallet: LocalAccount) -> None:
    text = login_text(wallet)
    signature = sign(wallet, text)
    assert siwe.recover_address(text, signature.removeprefix("0x")) == wallet.address.lower()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Nonce: a1b2c3d4e5f6a7b8", "Nonce: a1b2c3d4e5f6a7b9"),
        ("Chain ID: 31337", "Chain ID: 31338"),
        ("Sign in to tap", "Sign in to tip"),
        ("ed25519:8a", "ed25519:9a"),
    ],
)
def test_a_tampered_message_does_not_recover_the_signer(
    wallet: LocalAccount, old: str, new: str
) -> None:
    text = login_text(wallet, session_key_hex="8a" + SESSION_HEX[2:])
    signature = sign(wallet, text)
    tampered = text.replace(old, new)
    assert tampered != text
    assert siwe.recover_address(tampered, signature) != wallet.address.lower()


def test_a_message_signed_by_another_wallet_is_bad_signature(wallet: LocalAccount) -> None:
    text = login_text(wallet)
    assert login(text, sign(Account.create(), text)).error == "bad_signature"


def test_a_tampered_session_key_is_bad_signature(wallet: LocalAccount) -> None:
    other_key = bytes(SigningKey(bytes(range(1, 33))).verify_key).hex()
    text = login_text(wallet)
    assert login(text.replace(SESSION_HEX, other_key), sign(wallet, text)).error == "bad_signature"


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "0x",
        "0x" + "zz" * 65,
        "0x" + "00" * 64,
        "0x" + "00" * 66,
        "0x" + "00" * 65,  # r = s = 0
        "0x" + "11" * 64 + "05",  # v out of range
        "0x" + "11" * 64 + "25",  # v = 37: an EIP-155 transaction v, not personal_sign
        "0x" + "ff" * 64 + "1b",  # r, s above the curve order
        "0x" + "é" * 130,
    ],
)
def test_malformed_signatures_recover_nobody_and_never_raise(signature: str) -> None:
    assert siwe.recover_address(EIP_EXAMPLE, signature) is None


def test_v_may_be_written_as_0_or_1(wallet: LocalAccount) -> None:
    text = login_text(wallet)
    raw = bytes.fromhex(sign(wallet, text)[2:])
    low_v = raw[:64] + bytes([raw[64] - 27])
    assert siwe.recover_address(text, low_v.hex()) == wallet.address.lower()


# ── validation codes ───────────────────────────────────────────────────────────────────────────


def validate(msg: SiweMessage, now: int = ISSUED + 1) -> str | None:
    return siwe.validate(msg, domain=DOMAIN, uri=URI, chain_id=CHAIN, now_ms=now)


def message(wallet: LocalAccount, **change: object) -> SiweMessage:
    return msgspec.structs.replace(siwe.parse(login_text(wallet)), **change)


def test_a_message_for_this_server_in_date_validates(wallet: LocalAccount) -> None:
    assert validate(message(wallet)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"domain": "evil.example:8080"},
        {"domain": "127.0.0.1:8081"},
        {"uri": "http://127.0.0.1:8080/other"},
        {"scheme": "https"},
    ],
)
def test_another_origin_is_wrong_domain(wallet: LocalAccount, change: dict[str, object]) -> None:
    assert validate(message(wallet, **change)) == "wrong_domain"


def test_a_matching_explicit_scheme_is_accepted(wallet: LocalAccount) -> None:
    msg = message(wallet, scheme="http")
    assert siwe.parse(msg.to_text()).scheme == "http"
    assert validate(msg) is None


def test_another_chain_is_wrong_chain(wallet: LocalAccount) -> None:
    assert validate(message(wallet, chain_id=1)) == "wrong_chain"


def test_expiry_is_exclusive_and_not_before_inclusive(wallet: LocalAccount) -> None:
    msg = message(wallet, not_before=siwe.ms_to_iso(ISSUED + 10))
    assert validate(msg, now=ISSUED + 9) == "expired"
    assert validate(msg, now=ISSUED + 10) is None
    assert validate(msg, now=EXPIRES - 1) is None
    assert validate(msg, now=EXPIRES) == "expired"


def test_a_message_without_expiration_does_not_expire_by_itself(wallet: LocalAccount) -> None:
    """The challenge store's TTL still bounds it (the caller's unknown_nonce)."""
    assert validate(message(wallet, expiration_time=None), now=EXPIRES * 2) is None


def test_check_login_reports_validation_before_paying_for_recovery(wallet: LocalAccount) -> None:
    text = login_text(wallet, chain_id=1)
    assert login(text, "0x" + "00" * 65).error == "wrong_chain"
    assert login(login_text(wallet), sign(wallet, text), now=EXPIRES).error == "expired"


# ── session key resource ──────────────────────────────────────────────────────────────────────


def test_the_session_key_is_the_one_tap_resource(wallet: LocalAccount) -> None:
    other = "https://example.com/terms"
    msg = message(wallet, resources=(other, f"urn:tap:session-key:ed25519:{SESSION_HEX.upper()}"))
    assert siwe.session_key_of(msg) == SESSION_HEX


@pytest.mark.parametrize(
    "resources",
    [
        (),
        ("https://example.com/terms",),
        (
            f"urn:tap:session-key:ed25519:{SESSION_HEX}",
            f"urn:tap:session-key:ed25519:{SESSION_HEX}",
        ),
        ("urn:tap:session-key:ed25519:" + "00" * 32,),  # small-order point
        ("urn:tap:session-key:ed25519:" + "ab" * 31,),
        ("urn:tap:session-key:ed25519:" + SESSION_HEX + "00",),
    ],
)
def test_no_single_valid_session_key_is_invalid_request(
    wallet: LocalAccount, resources: tuple[str, ...]
) -> None:
    msg = message(wallet, resources=resources)
    assert siwe.session_key_of(msg) is None
    text = msg.to_text()
    result = login(text, sign(wallet, text))
    assert result.error == "invalid_request"
    assert "session-key" in result.detail


# ── strict parsing ─────────────────────────────────────────────────────────────────────────────


def test_without_a_statement_two_blank_lines_follow_the_address(wallet: LocalAccount) -> None:
    text = login_text(wallet, statement=None)
    assert f"{wallet.address}\n\n\nURI: " in text
    assert siwe.parse(text).statement is None


def test_an_empty_statement_is_a_third_blank_line(wallet: LocalAccount) -> None:
    text = login_text(wallet, statement="")
    assert f"{wallet.address}\n\n\n\nURI: " in text
    assert siwe.parse(text).statement == ""


def test_all_optional_fields_in_order_round_trip(wallet: LocalAccount) -> None:
    msg = message(
        wallet,
        scheme="http",
        not_before=siwe.ms_to_iso(ISSUED),
        request_id="req-1:%20@x",
    )
    assert siwe.parse(msg.to_text()) == msg


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("\n", "\r\n", "too few lines|expected"),
        ("wants you to sign in", "wants you to log in", "line 1"),
        ("Version: 1", "Version: 2", "Version"),
        ("Nonce: a1b2c3d4e5f6a7b8", "Nonce: a1b2c3d", "Nonce"),
        ("Nonce: a1b2c3d4e5f6a7b8", "Nonce: a1b2c3d4-5f6a7b8", "Nonce"),
        ("Chain ID: 31337", "Chain ID: 0x7a69", "Chain ID"),
        ("Chain ID: 31337", "Chain ID: ", "Chain ID"),
        ("URI: http://127.0.0.1:8080", "URI: not a uri", "URI"),
        ("Issued At: 2024-11-22T15:40:00.123Z", "Issued At: 2024-11-22 15:40:00Z", "Issued At"),
        ("Issued At: 2024-11-22T15:40:00.123Z", "Issued At: 2024-02-30T15:40:00Z", "Issued At"),
        ("Sign in to tap.", "Sign in to tap — now.", "statement"),
        ("Sign in to tap.", "Sign in to 100% tap.", "statement"),
        ("\n\nURI:", "\nURI:", "blank line"),
        ("Resources:\n", "Resources:\n\n", "line 13"),
        ("\n- urn", "\n-urn", "line 13"),
        ("Resources:", "resources:", "unexpected"),
    ],
)
def test_a_message_off_the_abnf_is_refused_naming_the_problem(
    wallet: LocalAccount, old: str, new: str, why: str
) -> None:
    text = login_text(wallet)
    assert old in text
    with pytest.raises(SiweFormatError, match=why):
        siwe.parse(text.replace(old, new, 1))


def test_a_trailing_newline_is_not_part_of_the_format(wallet: LocalAccount) -> None:
    with pytest.raises(SiweFormatError):
        siwe.parse(login_text(wallet, expiration_ms=None, session_key_hex=SESSION_HEX) + "\n")


def test_optional_fields_out_of_order_are_refused(wallet: LocalAccount) -> None:
    text = message(wallet, not_before=siwe.ms_to_iso(ISSUED)).to_text()
    exp, nbf = text.split("\n")[10], text.split("\n")[11]
    assert exp.startswith("Expiration Time: ") and nbf.startswith("Not Before: ")
    with pytest.raises(SiweFormatError):
        siwe.parse(text.replace(f"{exp}\n{nbf}", f"{nbf}\n{exp}"))


def test_an_address_without_its_eip55_checksum_is_refused(wallet: LocalAccount) -> None:
    text = login_text(wallet)
    lowered = text.replace(wallet.address, wallet.address.lower())
    assert lowered != text
    with pytest.raises(SiweFormatError, match="EIP-55"):
        siwe.parse(lowered)


def test_check_login_turns_format_errors_into_invalid_request(wallet: LocalAccount) -> None:
    result = login("hello", "0x" + "00" * 65)
    assert result.error == "invalid_request"
    assert result.detail.startswith("message:")


def test_the_builder_refuses_what_the_parser_would(wallet: LocalAccount) -> None:
    with pytest.raises(SiweFormatError, match="Nonce"):
        login_text(wallet, nonce="short")
    with pytest.raises(SiweFormatError, match="statement"):
        login_text(wallet, statement="two\nlines")


# ── times and nonces ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00.000Z", 0),
        ("2021-09-30T16:25:24Z", 1_633_019_124_000),
        ("2021-09-30t16:25:24z", 1_633_019_124_000),
        ("2021-09-30T18:25:24+02:00", 1_633_019_124_000),
        ("2021-09-30T14:25:24-02:00", 1_633_019_124_000),
        ("2021-09-30T16:25:24.5Z", 1_633_019_124_500),
        ("2021-09-30T16:25:24.123999Z", 1_633_019_124_123),
    ],
)
def test_rfc3339_times_read_as_epoch_ms(text: str, ms: int) -> None:
    assert siwe.iso_to_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "2021-09-30T16:25:24",  # no offset
        "2021-09-30T16:25:60Z",  # leap second
        "2021-13-01T00:00:00Z",
        "2021-09-30T16:25:24+24:00",
        "2021-09-30T16:25:24.Z",
        "２０２１-09-30T16:25:24Z",  # non-ASCII digits
    ],
)
def test_malformed_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        siwe.iso_to_ms(text)


@pytest.mark.parametrize("ms", [0, 1, 999, 1_732_290_000_123, 253_402_300_799_999])
def test_ms_to_iso_writes_milliseconds_and_z_and_reads_back(ms: int) -> None:
    text = siwe.ms_to_iso(ms)
    assert len(text) == 24 and text.endswith("Z") and text[19] == "."
    assert siwe.iso_to_ms(text) == ms
