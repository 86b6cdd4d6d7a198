"""Signed sessions and challenges (`tap/sessions.py`): any book with the secret accepts what any
other issued, nothing else passes, and a login runs every check and claims its challenge once.

Nothing here reads a clock: times are arguments. Claims go to a real `InMemoryHotState` (the
Redis one is pinned by the hot-state contract tests and tests/test_e2e_sessions.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
import trio
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from nacl.signing import SigningKey

from tap import siwe
from tap.errors import ApiError
from tap.hotstate import ClaimsFull, HotStateUnavailable, InMemoryHotState
from tap.sessions import (
    NONCE_CHARS,
    TOKEN_CHARS,
    Challenge,
    Session,
    SessionBook,
)

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32
DOMAIN = "127.0.0.1:8080"
URI = "http://127.0.0.1:8080"
CHAIN = 31337
NOW = 1_732_290_000_123
CHALLENGE_TTL = 300_000
SESSION_TTL = 86_400_000
A = "0x" + "aa" * 20
B = "0x" + "bb" * 20
KEY = bytes(SigningKey(bytes(range(32))).verify_key).hex()
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def book(secret: bytes = SECRET, **change: int) -> SessionBook:
    settings = {"challenge_ttl_ms": CHALLENGE_TTL, "session_ttl_ms": SESSION_TTL, **change}
    return SessionBook(secret, domain=DOMAIN, uri=URI, chain_id=CHAIN, **settings)


@pytest.fixture(scope="module")
def wallet() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


def signed_login(wallet: LocalAccount, challenge: Challenge, **change: object) -> tuple[str, str]:
    fields: dict[str, object] = {
        "domain": DOMAIN,
        "address": wallet.address,
        "uri": URI,
        "chain_id": CHAIN,
        "nonce": challenge.nonce,
        "issued_at_ms": challenge.issued_at,
        "expiration_ms": challenge.expires_at,
        "session_key_hex": KEY,
        **change,
    }
    text = siwe.login_message(**fields)  # type: ignore[arg-type]
    signed = Account.sign_message(encode_defunct(text=text), wallet.key)
    return text, "0x" + bytes(signed.signature).hex()


def other_chars(text: str, i: int) -> list[str]:
    """`text` with its i-th character replaced by each other character of the same alphabet."""
    alphabet = ALPHABET if text[i] in ALPHABET else "0123456789abcdef"
    return [text[:i] + c + text[i + 1 :] for c in alphabet if c != text[i]]


# ── tokens ────────────────────────────────────────────────────────────────────────────────────


def test_a_token_is_accepted_by_every_book_with_the_secret_and_carries_the_session() -> None:
    issued = book().open_session(A.upper().replace("0X", "0x"), KEY.upper(), NOW)
    assert len(issued.token) == TOKEN_CHARS
    found = book().lookup(issued.token, NOW + 1)  # another process, or after a restart
    assert found == Session(issued.token, A, KEY, NOW + SESSION_TTL, NOW) == issued


def test_a_token_expires_at_its_expires_at_and_not_before() -> None:
    token = book().open_session(A, KEY, NOW).token
    assert book().lookup(token, NOW + SESSION_TTL - 1) is not None
    assert book().lookup(token, NOW + SESSION_TTL) is None
    # The lifetime is the one signed in: a book with another session_ttl_ms does not stretch it.
    assert book(session_ttl_ms=10 * SESSION_TTL).lookup(token, NOW + SESSION_TTL) is None


def test_a_token_signed_with_another_secret_is_unknown() -> None:
    token = book(OTHER_SECRET).open_session(A, KEY, NOW).token
    assert book().lookup(token, NOW) is None


def test_every_single_character_change_of_a_token_is_refused() -> None:
    """Every field (version, address, key, times, MAC) is covered by the MAC; the last
    character's spare bits are covered by the one-spelling rule."""
    token = book().open_session(A, KEY, NOW).token
    b = book()
    for i in range(len(token)):
        assert all(b.lookup(t, NOW) is None for t in other_chars(token, i)), i


def test_a_token_with_a_rewritten_field_and_the_old_mac_is_refused() -> None:
    token = book().open_session(A, KEY, NOW).token
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    fields = struct.Struct(">B20s32sQQ")
    version, address, key, issued_at, expires_at = fields.unpack(raw[: fields.size])
    for change in (
        {"address": bytes.fromhex(B[2:])},
        {"expires_at": expires_at + 10 * SESSION_TTL},
        {"version": 2},
    ):
        values = {"version": version, "address": address, "key": key, "issued_at": issued_at}
        values |= {"expires_at": expires_at, **change}
        forged = fields.pack(*values.values()) + bytes(raw[fields.size :])
        text = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
        assert book().lookup(text, NOW) is None, change


def test_a_token_of_another_version_is_unknown_even_with_a_good_mac() -> None:
    """A later format (version 2) signed with the same secret is not read as this one."""
    b = book()
    fields = struct.pack(">B20s32sQQ", 2, bytes.fromhex(A[2:]), bytes.fromhex(KEY), NOW, NOW + 1)
    mac = hmac.new(b._token_key, fields, hashlib.sha256).digest()[:16]
    token = base64.urlsafe_b64encode(fields + mac).rstrip(b"=").decode()
    assert len(token) == TOKEN_CHARS and b.lookup(token, NOW) is None
    again = fields[:1].replace(b"\x02", b"\x01") + fields[1:]  # the same, as version 1
    mac = hmac.new(b._token_key, again, hashlib.sha256).digest()[:16]
    assert b.lookup(base64.urlsafe_b64encode(again + mac).rstrip(b"=").decode(), NOW) is not None


def test_garbage_tokens_are_unknown_and_never_raise() -> None:
    token = book().open_session(A, KEY, NOW).token
    b = book()
    for garbage in (
        "",
        token[:-1],
        token + "A",
        token + "=",
        token[:-2] + "==",
        "A" * TOKEN_CHARS,
        "x" * 10_000,
        token[:-1] + "é",  # non-ASCII, right length
        token[:-1] + "٣",  # a digit of another script
        token[:-1] + "\x00",
        "é" * TOKEN_CHARS,
        " " + token[1:],
    ):
        assert b.lookup(garbage, NOW) is None, garbage[:20]


def test_the_secret_must_have_32_bytes() -> None:
    with pytest.raises(ValueError, match="32"):
        book(b"x" * 31)


# ── challenges ────────────────────────────────────────────────────────────────────────────────


def test_a_challenge_nonce_is_an_eip4361_nonce_read_back_by_any_book_with_the_secret(
    wallet: LocalAccount,
) -> None:
    ch = book().issue_challenge(A.upper().replace("0X", "0x"), NOW)
    assert ch == Challenge(ch.nonce, A, NOW, NOW + CHALLENGE_TTL)
    assert len(ch.nonce) == NONCE_CHARS and ch.nonce.isalnum()
    signed_login(wallet, ch)  # the SIWE builder checks the nonce against the EIP-4361 ABNF
    assert book().read_challenge(ch.nonce, A) == ch
    assert book().read_challenge(ch.nonce, A.upper().replace("0X", "0x")) == ch
    nonces = {book().issue_challenge(A, NOW).nonce for _ in range(100)}
    assert len(nonces) == 100  # one address, one millisecond: still all different


def test_a_nonce_is_bound_to_its_address_and_secret_and_every_character() -> None:
    nonce = book().issue_challenge(A, NOW).nonce
    assert book().read_challenge(nonce, B) is None
    assert book(OTHER_SECRET).read_challenge(nonce, A) is None
    for i in range(len(nonce)):
        assert all(book().read_challenge(n, A) is None for n in other_chars(nonce, i)), i
    for garbage in ("", nonce[:-1], nonce + "0", nonce.upper(), "f" * 10_000, nonce[:-1] + "é"):
        assert book().read_challenge(garbage, A) is None
    assert book().read_challenge(nonce, "0x1234") is None


# ── login ─────────────────────────────────────────────────────────────────────────────────────


async def refused(
    b: SessionBook, hot: InMemoryHotState, text: str, sig: str, code: str, now: int = NOW + 1
) -> ApiError:
    with pytest.raises(ApiError) as e:
        await b.login(text, sig, now, claim_once=hot.claim_once)
    assert e.value.code == code, e.value
    return e.value


async def test_a_login_opens_a_session_any_book_accepts(wallet: LocalAccount) -> None:
    hot = InMemoryHotState(30_000, 10.0, 20)
    ch = book().issue_challenge(wallet.address, NOW)
    text, sig = signed_login(wallet, ch)
    session = await book().login(text, sig, NOW + 1, claim_once=hot.claim_once)
    assert session.address == wallet.address.lower() and session.session_key == KEY
    assert session.expires_at == NOW + 1 + SESSION_TTL
    assert book().lookup(session.token, NOW + 2) == session


async def test_a_challenge_is_redeemed_once_by_all_books_sharing_a_claim_store(
    wallet: LocalAccount,
) -> None:
    hot = InMemoryHotState(30_000, 10.0, 20)
    ch = book().issue_challenge(wallet.address, NOW)
    text, sig = signed_login(wallet, ch)
    await book().login(text, sig, NOW + 1, claim_once=hot.claim_once)
    await refused(book(), hot, text, sig, "unknown_nonce")
    await refused(book(), hot, text, sig, "unknown_nonce", now=ch.expires_at - 1)
    assert hot.claims() == 1


async def test_twenty_concurrent_logins_with_one_challenge_open_one_session(
    wallet: LocalAccount,
) -> None:
    hot = InMemoryHotState(30_000, 10.0, 20)
    text, sig = signed_login(wallet, book().issue_challenge(wallet.address, NOW))
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await book().login(text, sig, NOW + 1, claim_once=hot.claim_once)
            outcomes.append("ok")
        except ApiError as e:
            outcomes.append(e.code)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(attempt)
    assert sorted(outcomes) == ["ok"] + ["unknown_nonce"] * 19


async def test_refused_logins_spend_no_challenge(wallet: LocalAccount) -> None:
    b, hot = book(), InMemoryHotState(30_000, 10.0, 20)
    ch = b.issue_challenge(wallet.address, NOW)
    text, sig = signed_login(wallet, ch)
    await refused(b, hot, text, "0x" + "00" * 65, "bad_signature")
    await refused(b, hot, text, signed_login(Account.create(), ch)[1], "bad_signature")
    for change, code in (
        ({"domain": "evil.example"}, "wrong_domain"),
        ({"uri": "https://evil.example"}, "wrong_domain"),
        ({"chain_id": 1}, "wrong_chain"),
        ({"expiration_ms": NOW}, "expired"),
        ({"issued_at_ms": NOW + 1}, "expired"),  # not the challenge's own times
        ({"expiration_ms": NOW + 10 * CHALLENGE_TTL}, "expired"),
        ({"expiration_ms": None}, "expired"),
        ({"nonce": "f" * NONCE_CHARS}, "unknown_nonce"),  # never issued
        ({"session_key_hex": "00" * 32}, "invalid_request"),  # a small-order key
    ):
        await refused(b, hot, *signed_login(wallet, ch, **change), code)  # type: ignore[arg-type]
    await refused(b, hot, "hello", sig, "invalid_request")
    thief = Account.create()
    await refused(b, hot, *signed_login(thief, ch), "unknown_nonce")  # issued to another address
    assert hot.claims() == 0
    await b.login(text, sig, NOW + 1, claim_once=hot.claim_once)


async def test_a_challenge_is_good_until_its_expiry(wallet: LocalAccount) -> None:
    b, hot = book(), InMemoryHotState(30_000, 10.0, 20)
    ch = b.issue_challenge(wallet.address, NOW)
    text, sig = signed_login(wallet, ch)
    await refused(b, hot, text, sig, "expired", now=ch.expires_at)
    await b.login(text, sig, ch.expires_at - 1, claim_once=hot.claim_once)


async def test_a_challenge_older_than_the_claim_store_is_refused(wallet: LocalAccount) -> None:
    """A process without Redis starts with empty claim memory: what it cannot know was not
    redeemed already (before a restart), it refuses."""
    hot = InMemoryHotState(30_000, 10.0, 20)
    before = book().issue_challenge(wallet.address, NOW)
    restarted = book(claims_from_ms=NOW + 1)
    await refused(restarted, hot, *signed_login(wallet, before), "unknown_nonce", now=NOW + 2)
    after = restarted.issue_challenge(wallet.address, NOW + 1)
    await restarted.login(*signed_login(wallet, after), NOW + 2, claim_once=hot.claim_once)


async def test_a_claim_store_that_cannot_answer_is_503_and_spends_nothing(
    wallet: LocalAccount,
) -> None:
    b = book()
    text, sig = signed_login(wallet, b.issue_challenge(wallet.address, NOW))

    async def down(name: str, ttl_ms: int, now_ms: int) -> bool:
        raise HotStateUnavailable("Redis did not answer in time")

    async def full(name: str, ttl_ms: int, now_ms: int) -> bool:
        raise ClaimsFull(retry_after_ms=2_500)

    with pytest.raises(ApiError) as e:
        await b.login(text, sig, NOW + 1, claim_once=down)
    assert (e.value.code, e.value.status, e.value.retry_after_s) == (
        "dependency_unavailable",
        503,
        1,
    )
    with pytest.raises(ApiError) as e:
        await b.login(text, sig, NOW + 1, claim_once=full)
    assert (e.value.code, e.value.status, e.value.retry_after_s) == ("overloaded", 503, 3)
    hot = InMemoryHotState(30_000, 10.0, 20)
    await b.login(text, sig, NOW + 1, claim_once=hot.claim_once)


async def test_a_challenge_flood_stores_nothing_and_a_login_flood_is_bounded(
    wallet: LocalAccount,
) -> None:
    """Issue 9, defect 8, with signed challenges: 10,000 challenges cost no memory and spoil no
    other login; logins fill the claim store only up to its bound, evicting nobody's claim."""
    b = book()
    pending = b.issue_challenge(wallet.address, NOW)
    state = dict(vars(b))
    for _ in range(10_000):
        b.issue_challenge(A, NOW)
    assert vars(b) == state  # the book holds no entries at all
    hot = InMemoryHotState(30_000, 10.0, 20, max_claims=3)
    logins = []
    for i in range(4):
        account = Account.create()
        text, sig = signed_login(account, b.issue_challenge(account.address, NOW))
        logins.append((text, sig))
        if i < 3:
            await b.login(text, sig, NOW + 1, claim_once=hot.claim_once)
        else:
            error = await refused(b, hot, text, sig, "overloaded")
            assert error.retry_after_s == (CHALLENGE_TTL + 60_000 - 1) // 1000 + 1
    assert hot.claims() == 3
    text, sig = signed_login(wallet, pending)
    await refused(b, hot, text, sig, "overloaded")  # refused, not evicting a claim
    await refused(b, hot, *logins[0], "unknown_nonce")  # every claim made still holds
    later = NOW + 1 + CHALLENGE_TTL + 60_000  # the claims have expired: room again
    fresh = b.issue_challenge(wallet.address, later)
    await b.login(*signed_login(wallet, fresh), later + 1, claim_once=hot.claim_once)
    assert hot.claims() == 1


# ── the verified-token cache (issue 12: a dict lookup per request instead of base64 + HMAC) ──


def test_a_verified_token_is_remembered_and_still_expires() -> None:
    b = book()
    s = b.open_session(A, KEY, NOW)
    first = b.lookup(s.token, NOW + 1)
    assert first == s
    assert b.lookup(s.token, NOW + 2) is first  # the cached object, not a second decode
    assert b.lookup(s.token, s.expires_at - 1) is first
    assert b.lookup(s.token, s.expires_at) is None  # expiry holds for a remembered token
    assert b.lookup(s.token, s.expires_at + 1) is None


def test_a_forged_or_foreign_token_never_enters_the_cache() -> None:
    b = book()
    foreign = book(OTHER_SECRET).open_session(A, KEY, NOW)
    for _ in range(3):
        assert b.lookup(foreign.token, NOW) is None
    raw = bytearray(base64.urlsafe_b64decode(foreign.token + "=" * (-len(foreign.token) % 4)))
    raw[-1] ^= 1
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert b.lookup(flipped, NOW) is None
    assert b._verified == {}


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tap.sessions.VERIFIED_CACHE", 5)
    b = book()
    tokens = [b.open_session(A, KEY, NOW + i).token for i in range(12)]
    for t in tokens:
        assert b.lookup(t, NOW + 100) is not None
        assert len(b._verified) <= 5
    # Forgotten ones still verify (the slow way), the same session each time.
    assert all(b.lookup(t, NOW + 100) is not None for t in tokens)
