"""Sign-In with Ethereum (EIP-4361): write and strictly read the login message, check it against
this server, and recover the wallet that signed it (EIP-191 `personal_sign`).

It decides whether a message conforms to the EIP-4361 ABNF (`parse`), whether it was meant for us
and is in date (`validate`: `wrong_domain`, `wrong_chain`, `expired`), which session key it
registers (`session_key_of`), and who signed it (`recover_address`: `bad_signature`).
It leaves to its caller the nonce: that it was issued by us, for this address, with these times,
and is used once (`unknown_nonce`), and the session that follows (`tap/sessions.py`, which makes
the nonces and runs `check_login` for every login).

Field syntax is checked at the character level of RFC 3986 / RFC 3339 as the ABNF cites them;
line structure, order and blank lines exactly as the ABNF writes them, with LF line ends and no
trailing newline (the signature covers the exact text, so there is nothing to be lenient about).

Pure: times are arguments (`now_ms`); nothing here reads a clock.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

# eth_account imports py_ecc, which raises the recursion limit to 100000 for its own recursive
# arithmetic (which we never call: signatures are recovered by eth_keys). At 100000 CPython's
# recursion guard — and msgspec's nesting guard, which is the same counter — stops protecting
# the C stack: an untyped decode of a 50k-deep JSON array segfaults the process (issue 9).
# Put the limit back the moment the import is done. If py_ecc already ran (something imported
# eth_account before tap), the limit we find is its 100000, not the interpreter's: use CPython's
# default then.
_PY_ECC_LIMIT: Final = 100000
_CPYTHON_DEFAULT_LIMIT: Final = 1000
_RECURSION_LIMIT: Final = sys.getrecursionlimit()
from eth_account import Account  # noqa: E402
from eth_account.messages import encode_defunct  # noqa: E402
from eth_keys.exceptions import BadSignature  # noqa: E402
from eth_utils.address import to_checksum_address  # noqa: E402
from eth_utils.exceptions import ValidationError  # noqa: E402

sys.setrecursionlimit(
    _RECURSION_LIMIT if _RECURSION_LIMIT < _PY_ECC_LIMIT else _CPYTHON_DEFAULT_LIMIT
)

from tap.admission import SessionKey  # noqa: E402

WRONG_DOMAIN: Final = "wrong_domain"
WRONG_CHAIN: Final = "wrong_chain"
EXPIRED: Final = "expired"
BAD_SIGNATURE: Final = "bad_signature"
UNKNOWN_NONCE: Final = "unknown_nonce"  # decided by the caller (tap/sessions.py)
INVALID_REQUEST: Final = "invalid_request"  # not an EIP-4361 message, or no usable session key

SESSION_KEY_URN: Final = "urn:tap:session-key:ed25519:"
HEADER_SUFFIX: Final = " wants you to sign in with your Ethereum account:"

# ── RFC 3986 / RFC 3339 / EIP-4361 terms ──────────────────────────────────────────────────────
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_GEN_DELIMS = r":/?#\[\]@"
_PCT = r"%[0-9A-Fa-f]{2}"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_AUTHORITY = re.compile(
    rf"(?:(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*@)?"  # userinfo
    rf"(?:\[[0-9A-Fa-f:.vV{_UNRESERVED}{_SUB_DELIMS}]+\]|(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*)"
    r"(?::[0-9]*)?"  # port
)
_URI = re.compile(
    rf"[A-Za-z][A-Za-z0-9+.\-]*:(?:[{_UNRESERVED}{_SUB_DELIMS}{_GEN_DELIMS}]|{_PCT})*"
)
_STATEMENT = re.compile(rf"[{_UNRESERVED}{_SUB_DELIMS}{_GEN_DELIMS} ]*")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CHAIN_ID = re.compile(r"[0-9]{1,78}")  # EIP-155 chain ids are uint256: at most 78 digits
_NONCE = re.compile(r"[A-Za-z0-9]{8,}")
_REQUEST_ID = re.compile(rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})*")
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_SIGNATURE = re.compile(r"(?:0x)?[0-9a-fA-F]{130}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SiweFormatError(ValueError):
    """The text is not an EIP-4361 message; the text of the error says which line and why."""


def iso_to_ms(text: str) -> int:
    """An RFC 3339 date-time (what EIP-4361 calls `date-time`) to ms since the epoch.

    Fractions finer than a millisecond are truncated; a leap second (`:60`) is refused, since no
    ms count names it.
    """
    m = _DATE_TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, sign, off_h, off_m = m.group(7), m.group(8), m.group(9), m.group(10)
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from e
    ms = (local - _EPOCH) // timedelta(milliseconds=1) + int((frac or "0")[:3].ljust(3, "0"))
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"{text!r}: offset out of range")
        offset_ms = (int(off_h) * 60 + int(off_m)) * 60_000
        ms -= offset_ms if sign == "+" else -offset_ms
    return ms


def ms_to_iso(ms: int) -> str:
    """Ms since the epoch to `YYYY-MM-DDTHH:MM:SS.sssZ`, the form this server writes."""
    t = _EPOCH + timedelta(milliseconds=ms)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{ms % 1000:03d}Z"
    )


class SiweMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One EIP-4361 message, field by field as written (times stay text so it re-renders exactly;
    `*_ms` give them as numbers)."""

    domain: str  # RFC 3986 authority, e.g. "127.0.0.1:8080"
    address: str  # EIP-55 checksummed, as in the message
    uri: str
    version: str  # always "1"
    chain_id: int
    nonce: str  # ≥ 8 alphanumerics
    issued_at: str  # RFC 3339
    scheme: str | None = None  # the optional "https://" before the domain
    statement: str | None = None
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = ()

    @property
    def issued_at_ms(self) -> int:
        return iso_to_ms(self.issued_at)

    @property
    def expiration_ms(self) -> int | None:
        return None if self.expiration_time is None else iso_to_ms(self.expiration_time)

    @property
    def not_before_ms(self) -> int | None:
        return None if self.not_before is None else iso_to_ms(self.not_before)

    def to_text(self) -> str:
        """The message as the wallet signs it (checks every field first, see `check_fields`)."""
        check_fields(self)
        origin = self.domain if self.scheme is None else f"{self.scheme}://{self.domain}"
        lines = [origin + HEADER_SUFFIX, self.address, ""]
        if self.statement is not None:
            lines.append(self.statement)
        lines += [
            "",
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {self.issued_at}",
        ]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before is not None:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources:
            lines.append("Resources:")
            lines += [f"- {r}" for r in self.resources]
        return "\n".join(lines)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise SiweFormatError(what)


def _need_time(text: str, field: str) -> None:
    try:
        iso_to_ms(text)
    except ValueError as e:
        raise SiweFormatError(f"{field}: {e}") from e


def check_fields(msg: SiweMessage) -> None:
    """Raise `SiweFormatError` naming the first field that breaks the EIP-4361 ABNF."""
    _need(msg.scheme is None or _SCHEME.fullmatch(msg.scheme) is not None, "scheme: bad syntax")
    _need(_AUTHORITY.fullmatch(msg.domain) is not None, "domain: not an RFC 3986 authority")
    _need(_ADDRESS.fullmatch(msg.address) is not None, "address: expected 0x and 40 hex digits")
    _need(msg.address == to_checksum_address(msg.address), "address: not EIP-55 checksummed")
    _need(
        msg.statement is None or _STATEMENT.fullmatch(msg.statement) is not None,
        "statement: only RFC 3986 reserved/unreserved characters and spaces",
    )
    _need(_URI.fullmatch(msg.uri) is not None, "URI: not an RFC 3986 URI")
    _need(msg.version == "1", "Version: expected 1")
    _need(0 <= msg.chain_id < 2**256, "Chain ID: expected a uint256")
    _need(_NONCE.fullmatch(msg.nonce) is not None, "Nonce: expected 8+ letters and digits")
    _need_time(msg.issued_at, "Issued At")
    if msg.expiration_time is not None:
        _need_time(msg.expiration_time, "Expiration Time")
    if msg.not_before is not None:
        _need_time(msg.not_before, "Not Before")
    _need(
        msg.request_id is None or _REQUEST_ID.fullmatch(msg.request_id) is not None,
        "Request ID: expected RFC 3986 pchars",
    )
    for r in msg.resources:
        _need(_URI.fullmatch(r) is not None, f"Resources: {r!r} is not an RFC 3986 URI")


def login_message(
    *,
    domain: str,
    address: str,
    uri: str,
    chain_id: int,
    nonce: str,
    issued_at_ms: int,
    expiration_ms: int | None,
    session_key_hex: str,
    statement: str | None = "Sign in to tap. This registers a session key for placing bets.",
) -> str:
    """The message a tap client signs: the challenge's values and one session-key resource.

    For clients, the load generator, tests and docs; the server only ever parses.
    """
    return SiweMessage(
        domain=domain,
        address=to_checksum_address(address),
        uri=uri,
        version="1",
        chain_id=chain_id,
        nonce=nonce,
        issued_at=ms_to_iso(issued_at_ms),
        expiration_time=None if expiration_ms is None else ms_to_iso(expiration_ms),
        statement=statement,
        resources=(SESSION_KEY_URN + session_key_hex.lower(),),
    ).to_text()


def _tagged(lines: list[str], i: int, tag: str) -> str:
    _need(i < len(lines) and lines[i].startswith(tag), f"line {i + 1}: expected {tag!r}")
    return lines[i][len(tag) :]


def parse(text: str) -> SiweMessage:
    """Read an EIP-4361 message exactly as the ABNF writes it, or raise `SiweFormatError`.

    Without a statement the address is followed by two blank lines; with one, the statement sits
    between two blank lines (an empty statement is a third blank line, as the ABNF allows).
    """
    lines = text.split("\n")
    _need(len(lines) >= 9, "too few lines for an EIP-4361 message")
    header = lines[0]
    _need(header.endswith(HEADER_SUFFIX), f"line 1: expected '<domain>{HEADER_SUFFIX}'")
    origin = header[: -len(HEADER_SUFFIX)]
    scheme: str | None = None
    if "://" in origin:
        scheme, origin = origin.split("://", 1)
    _need(lines[2] == "", "line 3: expected a blank line after the address")
    statement: str | None = None
    if lines[3] == "" and lines[4].startswith("URI: "):
        i = 4
    else:
        statement = lines[3]
        _need(lines[4] == "", "line 5: expected a blank line after the statement")
        i = 5
    uri = _tagged(lines, i, "URI: ")
    version = _tagged(lines, i + 1, "Version: ")
    chain_text = _tagged(lines, i + 2, "Chain ID: ")
    _need(_CHAIN_ID.fullmatch(chain_text) is not None, "Chain ID: expected 1 to 78 digits")
    nonce = _tagged(lines, i + 3, "Nonce: ")
    issued_at = _tagged(lines, i + 4, "Issued At: ")
    i += 5
    optional: dict[str, str | None] = {}
    for tag in ("Expiration Time: ", "Not Before: ", "Request ID: "):
        if i < len(lines) and lines[i].startswith(tag):
            optional[tag] = lines[i][len(tag) :]
            i += 1
        else:
            optional[tag] = None
    resources: list[str] = []
    if i < len(lines):
        _need(lines[i] == "Resources:", f"line {i + 1}: unexpected {lines[i][:40]!r}")
        for j in range(i + 1, len(lines)):
            resources.append(_tagged(lines, j, "- "))
    msg = SiweMessage(
        domain=origin,
        address=lines[1],
        uri=uri,
        version=version,
        chain_id=int(chain_text),
        nonce=nonce,
        issued_at=issued_at,
        scheme=scheme,
        statement=statement,
        expiration_time=optional["Expiration Time: "],
        not_before=optional["Not Before: "],
        request_id=optional["Request ID: "],
        resources=tuple(resources),
    )
    check_fields(msg)
    return msg


def validate(msg: SiweMessage, *, domain: str, uri: str, chain_id: int, now_ms: int) -> str | None:
    """The login code for a message that is not for this server or not in date, else None.

    A scheme, when the message names one, must be the scheme of our `uri`. `expired` covers both
    ends: the expiration time has come (`now >= expiration`), or the not-before time has not.
    The caller still owes the `unknown_nonce` check against its challenge store.
    """
    if msg.domain != domain or msg.uri != uri:
        return WRONG_DOMAIN
    if msg.scheme is not None and msg.scheme != uri.split(":", 1)[0]:
        return WRONG_DOMAIN
    if msg.chain_id != chain_id:
        return WRONG_CHAIN
    expiration = msg.expiration_ms
    if expiration is not None and now_ms >= expiration:
        return EXPIRED
    not_before = msg.not_before_ms
    if not_before is not None and now_ms < not_before:
        return EXPIRED
    return None


def session_key_of(msg: SiweMessage) -> str | None:
    """The lowercase hex Ed25519 key of the message's one `urn:tap:session-key:ed25519:<64 hex>`
    resource, or None when there is none, more than one, or it is no valid key (see
    `SessionKey`). Other resources are allowed (EIP-4361 leaves their meaning to the relying
    party) and ignored."""
    keys = [r[len(SESSION_KEY_URN) :] for r in msg.resources if r.startswith(SESSION_KEY_URN)]
    if len(keys) != 1:
        return None
    key = SessionKey.from_hex(keys[0])
    return None if key is None else key.hex


def recover_address(message_text: str, signature_hex: str) -> str | None:
    """The lowercase address whose EIP-191 `personal_sign` signature this is, or None.

    `signature_hex` is 65 bytes r‖s‖v in hex (`0x` optional), v one of 27, 28 (or 0, 1 as some
    hardware wallets write it). Never raises: any malformed or unrecoverable signature is None.
    Costs several milliseconds of CPU (pure-Python secp256k1 here): run it off the event loop.
    """
    if _SIGNATURE.fullmatch(signature_hex) is None:
        return None
    signature = bytes.fromhex(signature_hex.removeprefix("0x"))
    if signature[64] not in (0, 1, 27, 28):
        return None
    try:
        signer: str = Account.recover_message(
            encode_defunct(text=message_text), signature=signature
        )
    except (BadSignature, ValidationError, ValueError, IndexError):
        return None
    return signer.lower()


class LoginCheck(msgspec.Struct, frozen=True):
    """What `check_login` found: an error code, or the message and the session key it registers."""

    error: str | None
    detail: str = ""
    message: SiweMessage | None = None
    session_key: SessionKey | None = None


def check_login(
    message_text: str, signature_hex: str, *, domain: str, uri: str, chain_id: int, now_ms: int
) -> LoginCheck:
    """Everything about a login except the nonce, cheapest first; the signature last.

    The caller then checks `message.nonce` (issued for `message.address`, unexpired, unused →
    else `unknown_nonce`) and consumes it: `SessionBook.login` does.
    """
    try:
        msg = parse(message_text)
    except SiweFormatError as e:
        return LoginCheck(INVALID_REQUEST, f"message: {e}")
    code = validate(msg, domain=domain, uri=uri, chain_id=chain_id, now_ms=now_ms)
    if code is not None:
        return LoginCheck(code, message=msg)
    key_hex = session_key_of(msg)
    if key_hex is None:
        return LoginCheck(
            INVALID_REQUEST,
            f"message: expected exactly one resource {SESSION_KEY_URN}<64 hex>",
            message=msg,
        )
    signer = recover_address(message_text, signature_hex)
    if signer is None or signer != msg.address.lower():
        return LoginCheck(BAD_SIGNATURE, message=msg)
    return LoginCheck(None, message=msg, session_key=SessionKey(key_hex))
