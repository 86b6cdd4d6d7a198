"""Decoding untrusted bytes: the one door through which HTTP bodies and WebSocket frames enter.

It decides whether a payload may be decoded and decodes it into a typed, bounded msgspec Struct;
every way that can fail — too big, nested too deep, not UTF-8, not JSON, wrong shape — becomes
one `WireError` the caller turns into a `400 invalid_request` / `413` or a WS `error` frame / close.
It does no I/O and knows nothing of HTTP or WebSocket.

Why the checks come before msgspec (DESIGN, "More pitfalls"): msgspec's own nesting guard is
CPython's recursion limit, which any library may raise (py_ecc sets 100000, and then a 50k-deep
array overflows the C stack and kills the process). The size cap bounds the work; the depth scan
is a linear pass in C-speed primitives plus one short Python loop over the brackets alone, and
never recurses. Decoding is always typed: a frame that fails validation is not decoded again
"untyped" to recover fields from it.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate
from typing import Any, Final, TypeVar, overload

import msgspec

T = TypeVar("T")

MAX_DEPTH: Final = 32  # API.md: JSON nested deeper than 32 levels is refused

# Error codes a WireError carries (API.md error codes).
INVALID_REQUEST: Final = "invalid_request"
TOO_LARGE: Final = "payload_too_large"

# The four brackets as signed steps (+1 open, -1 close), every other byte deleted.
_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# msgspec's ValidationError messages end in "- at `$.field[0].sub`"; top-level ones name the
# field ("Object missing required field `amount`").
_PATH: Final = re.compile(r" - at `\$((?:\.|\[).*)`$")
_NAMED: Final = re.compile(r"field `([^`]*)`")
_MAX_MESSAGE = 200  # msgspec quotes offending values ("Invalid value 'xxx…'"): never echo 16 KiB


class WireError(Exception):
    """An untrusted payload that cannot be accepted.

    `code` is the API error code (`invalid_request`, or `payload_too_large` for the size cap),
    `message` a human text safe to send back (bounded: at most ~270 chars), `field` the JSON path
    of the offending field when a type/shape check named one (`"amount"`, `"channels[3]"`).
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def nesting_depth_exceeds(data: bytes, max_depth: int) -> bool:
    """True if `data`, read as JSON, opens more than `max_depth` arrays/objects at once.

    Brackets inside JSON strings (escaped quotes and backslashes included) do not count. For
    malformed input the answer may overstate the depth past the point where a parser would
    stop, which is harmless: malformed input is refused anyway. Every step is a C-level bytes
    primitive, linear in `len(data)` (≈0.4 ms for the worst 16 KiB frame); payloads with at
    most `max_depth` brackets — every legitimate API payload — cost two `count`s.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False
    if b"\\" in data:
        # Inside strings, left to right: drop escaped backslashes first, then escaped quotes;
        # what is left of each string is quote…quote with no quote inside.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    if b'"' in data:
        data = b"".join(data.split(b'"')[::2])  # even parts lie outside strings
    steps = data.translate(_STEPS, _NOT_BRACKET)
    if steps.count(1) <= max_depth:
        return False
    if b"\x01" * (max_depth + 1) in steps:  # the classic "[[[[…": found at C speed, no sum
        return True
    return max(accumulate(array("b", steps))) > max_depth


@overload
def decode_untrusted(
    raw: bytes | str, typ: type[T], *, max_bytes: int, max_depth: int = MAX_DEPTH
) -> T: ...
@overload
def decode_untrusted(
    raw: bytes | str, typ: Any, *, max_bytes: int, max_depth: int = MAX_DEPTH
) -> Any: ...  # a union of Structs (`ClientFrame`) is not a `type[T]` to mypy
def decode_untrusted(
    raw: bytes | str, typ: Any, *, max_bytes: int, max_depth: int = MAX_DEPTH
) -> Any:
    """Decode `raw` into `typ` (a msgspec-decodable type, in practice a bounded Struct or a
    tagged union of them), or raise `WireError`.

    Order matters: size first (bounds all later work), then nesting depth (protects the C
    stack whatever the recursion limit is), then the typed decode. `str` input (a WebSocket
    text frame) is measured and decoded as its UTF-8 bytes.
    """
    if isinstance(raw, str):
        if len(raw) > max_bytes:  # every char is at least one byte: no need to encode to know
            raise WireError(TOO_LARGE, f"payload larger than {max_bytes} bytes")
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not something UTF-8 on the wire can carry
            raise WireError(INVALID_REQUEST, "payload is not valid UTF-8") from None
    else:
        data = raw
    if len(data) > max_bytes:
        raise WireError(TOO_LARGE, f"payload larger than {max_bytes} bytes")
    if nesting_depth_exceeds(data, max_depth):
        raise WireError(INVALID_REQUEST, f"JSON nested deeper than {max_depth} levels")
    try:
        return msgspec.json.decode(data, type=typ)
    except msgspec.ValidationError as e:
        raise WireError(INVALID_REQUEST, *_explain(str(e))) from None
    except msgspec.DecodeError as e:
        raise WireError(INVALID_REQUEST, f"not valid JSON: {e}") from None
    except UnicodeDecodeError:  # msgspec raises it for invalid UTF-8 inside a string
        raise WireError(INVALID_REQUEST, "payload is not valid UTF-8") from None
    except RecursionError:  # unreachable after the depth scan; kept so no path can escape
        raise WireError(INVALID_REQUEST, f"JSON nested deeper than {max_depth} levels") from None


def _explain(text: str) -> tuple[str, str | None]:
    """A bounded message and the field it names, from a msgspec ValidationError text."""
    field: str | None = None
    if (m := _PATH.search(text)) is not None:
        field = m.group(1).removeprefix(".")
    elif (m := _NAMED.search(text)) is not None:
        field = m.group(1)
    if field is not None and len(field) > 64:
        field = field[:64] + "…"
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
        if field is not None:
            text += f" (field {field})"
    return text, field
