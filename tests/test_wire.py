"""`tap.wire`: untrusted bytes become a typed Struct or one `WireError`, never a crash.

Pins issue 9 defect 2 at its root: a 50k-deep frame is refused before msgspec sees it (whatever
the recursion limit), and importing tap leaves the interpreter's recursion limit where it was,
so msgspec's own guard protects the C stack again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given

from tap.messages import ClientFrame, WsPing, WsSubscribe
from tap.wire import MAX_DEPTH, WireError, decode_untrusted, nesting_depth_exceeds

DEEP_FRAME = "[" * 50000 + "]" * 50000  # the exact repro


def test_50k_deep_frame_is_a_wire_error_even_with_a_raised_recursion_limit() -> None:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(100000)  # what py_ecc does: msgspec's guard no longer protects
    try:
        with pytest.raises(WireError) as deep:
            decode_untrusted(DEEP_FRAME, ClientFrame, max_bytes=1 << 20)
        with pytest.raises(WireError) as deep_bytes:
            decode_untrusted(DEEP_FRAME.encode(), ClientFrame, max_bytes=1 << 20)
        with pytest.raises(WireError) as big:
            decode_untrusted(DEEP_FRAME, ClientFrame, max_bytes=16 * 1024)
    finally:
        sys.setrecursionlimit(before)
    assert deep.value.code == "invalid_request" and "deeper than 32" in deep.value.message
    assert deep_bytes.value.code == "invalid_request"
    assert big.value.code == "payload_too_large"  # size is checked first


@pytest.mark.parametrize("eth_account_first", [False, True])
def test_importing_tap_restores_the_recursion_limit_so_a_deep_decode_cannot_crash(
    eth_account_first: bool,
) -> None:
    # A fresh interpreter, as `tap serve` starts (and as a test process does, which may import
    # eth_account before tap): the whole edge (eth_account → py_ecc) must leave the limit at the
    # interpreter's. Then even an *untyped* decode of the deep frame raises RecursionError
    # instead of overflowing the C stack (old code: SIGSEGV, return code -11).
    script = textwrap.dedent(
        f"""
        import sys
        before = sys.getrecursionlimit()
        if {eth_account_first}:
            import eth_account  # noqa: F401
        import tap.edge.app, tap.siwe  # noqa: F401
        import py_ecc  # noqa: F401  (proves the raising library really was imported)
        after = sys.getrecursionlimit()
        import msgspec
        try:
            msgspec.json.decode({DEEP_FRAME!r})
        except RecursionError:
            print("refused", before, after)
        assert after == before, (before, after)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("refused")


def test_depth_limit_is_exactly_32() -> None:
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    too_deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    assert decode_untrusted(ok, Any, max_bytes=1024) is not None  # type: ignore[arg-type]
    with pytest.raises(WireError, match="deeper"):
        decode_untrusted(too_deep, Any, max_bytes=1024)  # type: ignore[arg-type]
    with pytest.raises(WireError, match="deeper"):
        decode_untrusted('{"a":' * 33 + "1" + "}" * 33, Any, max_bytes=1024)  # type: ignore[arg-type]


def test_brackets_inside_strings_do_not_count_and_escapes_are_respected() -> None:
    inside = '["' + "[" * 100 + '"]'
    assert not nesting_depth_exceeds(inside.encode(), MAX_DEPTH)
    escaped_quote = '["\\"' + "[" * 100 + '"]'  # \" does not end the string
    assert not nesting_depth_exceeds(escaped_quote.encode(), MAX_DEPTH)
    # \\ ends in a real quote: the brackets after it are structure.
    escaped_backslash = '["\\\\"' + ",[" * 40 + "]" * 40 + "]"
    assert nesting_depth_exceeds(escaped_backslash.encode(), MAX_DEPTH)
    assert msgspec.json.decode(escaped_quote) == ['"' + "[" * 100]


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(alphabet=st.sampled_from('[]{}"\\ab,:\u00e9'), max_size=12),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=60,
)


def _depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


@given(value=json_values, limit=st.integers(0, 12))
def test_the_depth_scan_agrees_with_the_real_nesting_of_any_json(value: object, limit: int) -> None:
    assert nesting_depth_exceeds(msgspec.json.encode(value), limit) == (_depth(value) > limit)


def test_every_failure_is_one_wire_error_with_a_bounded_message() -> None:
    cases: list[tuple[bytes | str, str, str | None]] = [
        (b'{"type":"subscribe","channels":["\xff"]}', "invalid_request", None),  # bad UTF-8
        ('{"type":"ping","req_id":"\ud800"}', "invalid_request", None),  # lone surrogate
        ('{"type":"ping","req_id":"\\ud800"}', "invalid_request", None),  # escaped, unpaired
        (b"\x00\x01garbage", "invalid_request", None),
        ('{"type":"subscribe","channels":[1]}', "invalid_request", "channels[0]"),
        ('{"type":"subscribe"}', "invalid_request", "channels"),
        ('{"type":"ping","extra":1}', "invalid_request", "extra"),
        ('{"type":"' + "x" * 10000 + '"}', "invalid_request", "type"),
        ("x" * 20000, "payload_too_large", None),
        ("é" * 9000, "payload_too_large", None),  # 9000 chars, 18000 bytes
    ]
    for raw, code, field in cases:
        with pytest.raises(WireError) as err:
            decode_untrusted(raw, ClientFrame, max_bytes=16 * 1024)
        assert (err.value.code, err.value.field) == (code, field), raw[:60]
        assert len(err.value.message) <= 300


def test_valid_frames_decode_typed() -> None:
    assert decode_untrusted(b'{"type":"ping","req_id":"a"}', ClientFrame, max_bytes=100) == (
        WsPing(req_id="a")
    )
    sub = decode_untrusted('{"type":"subscribe","channels":["a"]}', ClientFrame, max_bytes=100)
    assert sub == WsSubscribe(channels=["a"])
