"""Hostile HTTP against a real server (issue 9, defects 6–8): bytes that are not UTF-8, JSON too
deep, header values too long or in the wrong script, cursors and path segments of any size, a
413 on a keep-alive connection, and floods of challenges and logins. Nothing answers 5xx, every
refusal has API.md's error shape (with `X-Request-ID`, and `Retry-After` on 429/503), no
connection is left hanging, and a flood never takes a legitimate player's pending login.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e import ADMIN_TOKEN, Player, Server, pick_cell, placeable_cells, serving

STAKE = 1_000_000
BAD_UTF8 = b"\xff\xfe\xc3("  # not UTF-8 (a lone continuation byte, a truncated sequence)


def refusal(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert API.md's error shape and headers; return the error object."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert r.headers.get("X-Request-ID"), r.headers
    if status in (429, 503):
        assert int(r.headers["Retry-After"]) >= 1, r.headers
    error: dict[str, Any] = body["error"]
    return error


async def logged_in(server: Server, deposit: int = 100_000_000) -> Player:
    player = server.player()
    await player.login()
    await player.deposit(deposit)
    return player


# ── defect 6: bodies, headers, query and path parameters ──────────────────────────────────────


async def test_invalid_utf8_in_a_json_string_is_400_on_every_post_route(server: Server) -> None:
    """msgspec raises UnicodeDecodeError (not DecodeError) for it: it was a 500 everywhere."""
    player = await logged_in(server)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("/api/auth/challenge", b'{"address": "' + BAD_UTF8 + b'"}', {}),
        ("/api/auth/login", b'{"message": "' + BAD_UTF8 + b'", "signature": "0x"}', {}),
        ("/api/bets", b'{"cell_id": "' + BAD_UTF8 + b'"}', player.auth),
        ("/api/deposits", b'{"amount": 5, "x": "' + BAD_UTF8 + b'"}', player.auth),
        ("/api/withdrawals", b'{"nonce": "' + BAD_UTF8 + b'"}', player.auth),
        ("/admin/breaker", b'{"mode": "' + BAD_UTF8 + b'"}', admin),
        ("/admin/credit", b'{"address": "0x", "reason": "' + BAD_UTF8 + b'"}', admin),
    ]
    for path, body, headers in cases:
        r = await player.http.post(
            path, content=body, headers={**headers, "Content-Type": "application/json"}
        )
        refusal(r, 400, "invalid_request")
    assert (await player.http.get("/livez")).status_code == 200


async def test_json_nested_deeper_than_32_is_refused_before_decoding(server: Server) -> None:
    player = await logged_in(server)
    deep = b'{"cell_id": ' + b"[" * 33 + b"]" * 33 + b"}"
    error = refusal(
        await player.http.post("/api/bets", content=deep, headers=player.auth),
        400,
        "invalid_request",
    )
    assert "deeper than 32" in error["message"]
    # 50,000 levels (the frame that overflowed the C stack over WS) is the same 400.
    abyss = b"[" * 50_000
    r = await player.http.post("/api/auth/challenge", content=abyss[:16_000])
    assert "deeper than 32" in refusal(r, 400, "invalid_request")["message"]
    # Brackets inside strings are not nesting: 32 real levels (the object and 31 arrays) and a
    # string of brackets pass the check (and fail only on the field types).
    shallow = b'{"cell_id": "' + b"[{" * 100 + b'", "amount": ' + b"[" * 31 + b"]" * 31 + b"}"
    r = await player.http.post("/api/bets", content=shallow, headers=player.auth)
    assert "deeper" not in refusal(r, 400, "invalid_request")["message"]


async def test_a_5000_digit_prefer_wait_counts_as_10_and_garbage_is_ignored(
    server: Server,
) -> None:
    """int() of more than 4,300 digits raises ValueError: this was a 500 after the bet was
    already queued."""
    player = await logged_in(server)
    cell = await pick_cell(server, min_lead_ms=5000)
    headers = {**player.auth, "Prefer": "wait=" + "9" * 5000}
    r = await player.http.post(
        "/api/bets", json=player.signed_bet(cell["cell_id"], STAKE), headers=headers
    )
    assert r.status_code == 201, r.text
    assert r.headers["Preference-Applied"] == "wait=10"
    assert r.json()["status"] == "confirmed"
    # Not a number in ASCII digits: no preference at all (202 at once).
    others = placeable_cells(await server.grid(), after_ts=server.now() + 5000)
    others = [c for c in others if c["cell_id"] != cell["cell_id"]]
    assert len(others) >= 4
    for prefer, other in zip(
        ("wait=٣", "wait=abc", "wait=-5", "wait=" + "x" * 2000), others, strict=False
    ):
        body = player.signed_bet(other["cell_id"], STAKE)
        r = await player.http.post(
            "/api/bets", json=body, headers={**player.auth, "Prefer": prefer.encode()}
        )
        assert r.status_code == 202, (prefer, r.text)
        assert "Preference-Applied" not in r.headers


async def test_cursors_beyond_their_bounds_are_400(server: Server) -> None:
    """Cursors are opaque strings of at most 128 characters; one naming a position beyond 2⁶³
    could not bind to SQLite (a 500)."""
    player = await logged_in(server)

    def b64(raw: str) -> str:
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    for cursor in (
        b64("c" + "9" * 25),  # 10²⁵
        b64(f"c{2**63}"),
        b64("c" + "٣" * 5),  # digits, but not ASCII ones
        b64("c-1"),
        "x" * 129,
        "é" * 10,
        "%%%",
    ):
        for path in ("/api/bets", "/api/ledger"):
            r = await player.get(path, cursor=cursor)
            refusal(r, 400, "invalid_request")


async def test_a_non_ascii_admin_token_is_401_like_any_wrong_token(server: Server) -> None:
    """hmac.compare_digest refuses non-ASCII str with TypeError: this was a 500."""
    client = server.http()
    for header in (
        "Bearer é".encode("latin-1"),
        "Bearer e2e-admin-token-0123456789é".encode(),
        b"Bearer \xff\xfe",
        b"Bearer " + ADMIN_TOKEN.encode()[:-1],
    ):
        r = await client.get("/admin/integrity", headers={"Authorization": header})  # type: ignore[dict-item]
        refusal(r, 401, "unauthorized")
    r = await client.get("/admin/integrity", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text


async def test_every_route_refuses_hostile_query_and_path_values_without_a_5xx(
    server: Server,
) -> None:
    player = await logged_in(server)
    answers: list[httpx.Response] = []

    async def get(path: str, **params: Any) -> httpx.Response:
        r = await player.http.get(path, params=params, headers=player.auth)
        answers.append(r)
        return r

    huge, unicode_digits = "9" * 5000, "１２"  # fullwidth digits: int() takes them, we do not
    for path in ("/api/bets", "/api/ledger", "/api/prices/BTC-USD"):
        for bad in (huge, "-" + huge, unicode_digits, "٣", "1e3", " 5", "0x10", "5_0", "\x00", ""):
            r = await get(path, limit=bad)
            if bad == "":
                assert r.status_code == 200, r.text  # empty = the default
            else:
                refusal(r, 400, "invalid_request")
    for name in ("from", "to"):
        for bad in (huge, "-1", str(2**53), unicode_digits):
            refusal(await get("/api/prices/BTC-USD", **{name: bad}), 400, "invalid_request")
    assert (await get("/api/prices/BTC-USD", **{"from": "0", "to": str(2**53 - 1)})).is_success
    for bad in ("winning", "é", huge):
        refusal(await get("/api/bets", status=bad), 400, "invalid_request")
    # Path segments: huge, unicode, control characters, not-UTF-8 escapes — 404, echoed short.
    for segment in ("x" * 8000, "é" * 300, "%00", "%FF%FE", "%C3%28", "b" + "0" * 24):
        for prefix in ("/api/bets/", "/api/bets/by-nonce/", "/api/grid/", "/api/prices/"):
            r = await get(prefix + segment)
            assert len(refusal(r, 404, "not_found")["message"]) < 200
    assert all(a.status_code < 500 for a in answers)
    assert all(a.headers.get("X-Request-ID") for a in answers)
    # A request id we would not log as is gets replaced, never echoed.
    r = await player.http.get("/livez", headers={"X-Request-ID": ("é" * 100).encode()})
    assert r.status_code == 200 and r.headers["X-Request-ID"].isascii()


# ── defect 7: a response before the body's end closes the connection ─────────────────────────


async def _exchange(
    server: Server, request: bytes, then: bytes, *, until: bytes | None = None
) -> tuple[bytes, bool]:
    """Send `request` on a fresh keep-alive socket; once a whole response arrived, send `then`
    (a second request). Returns what was read and whether the server closed the connection
    (EOF or reset), read until it did or until what was read ends with `until` — within a bound
    that only guards against hanging forever."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    closed = False
    with trio.move_on_after(15):
        try:
            await stream.send_all(request)
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
                if until is not None and received.endswith(until):
                    break
                if then and _whole_response(received):
                    try:
                        await stream.send_all(then)
                    except trio.BrokenResourceError:
                        pass
                    then = b""
        except trio.BrokenResourceError:  # reset: closed as well
            closed = True
    await stream.aclose()
    return received, closed


def _whole_response(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return bool(sep) and len(body) >= int(line.split(b":")[1])
    return False


def _post_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: tap\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("declared", "sent"),
    [
        (20_000, 20_000),  # over the limit, sent whole
        (10_000_000, 20_000),  # declared huge, part sent, then the client waits
        (20_000, 0),  # only the head
    ],
)
async def test_a_413_on_keep_alive_says_connection_close_and_closes(
    server: Server, declared: int, sent: int
) -> None:
    """The 413 left the connection open with h11 inside the refused request: the client's next
    request on it hung forever (and 50 such sockets held 50 descriptors)."""
    livez = b"GET /livez HTTP/1.1\r\nHost: tap\r\n\r\n"
    request = _post_head("/api/auth/challenge", declared) + b" " * sent
    received, closed = await _exchange(server, request, livez)
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 413"), received[:200]
    assert b"\r\nconnection: close" in head
    assert b"x-request-id: " in head
    assert b'"code":"payload_too_large"' in received
    assert closed, "the server left the connection open"
    assert received.count(b"HTTP/1.1 ") == 1  # the second request was not taken as a body
    # A chunked body over the limit too, and an early 401: closed, and the server serves on.
    chunked = (
        b"POST /api/bets HTTP/1.1\r\nHost: tap\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"3e8\r\n" + b" " * 1000 + b"\r\n") * 20
    )
    received, closed = await _exchange(server, chunked, livez)
    assert received.startswith(b"HTTP/1.1 401") and closed, received[:200]
    assert (await server.http().get("/livez")).status_code == 200


async def test_a_keep_alive_connection_is_reused_when_the_body_was_read(server: Server) -> None:
    """Connection: close only where the body was left unread: an ordinary refusal (400 after
    reading the body) and a GET keep the connection."""
    livez = b"GET /livez HTTP/1.1\r\nHost: tap\r\n\r\n"
    request = _post_head("/api/auth/challenge", 2) + b"{}"
    received, closed = await _exchange(server, request, livez, until=b'{"status":"pass"}')
    assert received.startswith(b"HTTP/1.1 400"), received[:200]
    assert received.count(b"HTTP/1.1 200") == 1, received  # the second request was answered
    assert b"connection: close" not in received.lower()
    assert not closed


async def test_an_idle_keep_alive_connection_is_closed_after_its_request(tmp_path: Path) -> None:
    """quart-trio's cancellation also skipped Hypercorn's idle timer after every keep-alive
    response: a connection that made one request and went quiet was held forever."""
    async with serving(tmp_path, server__keep_alive_timeout_s=0.5) as server:
        livez = b"GET /livez HTTP/1.1\r\nHost: tap\r\n\r\n"
        received, closed = await _exchange(server, livez, b"")
        assert received.startswith(b"HTTP/1.1 200") and closed, received[:200]


# ── defect 8: challenge and login floods, client addresses ────────────────────────────────────


def _from(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def test_a_challenge_flood_is_rate_limited_and_spoils_no_pending_login(
    tmp_path: Path,
) -> None:
    """Challenges are signed, not stored: a flood costs the server no memory, and the flooding
    client is held to its challenge rate (429) while another client's login goes through."""
    limits = {
        "limits__challenge_rate_per_s": 1.0,
        "limits__challenge_burst": 1_000,
        "server__trusted_proxies": ["127.0.0.1"],
    }
    async with serving(tmp_path, **limits) as server:
        victim = server.player()
        r = await victim.http.post(
            "/api/auth/challenge",
            json={"address": victim.account.address},
            headers=_from("203.0.113.7"),
        )
        assert r.status_code == 200, r.text
        pending = r.json()
        flood = server.http()
        statuses: dict[int, int] = {}
        for i in range(1_200):
            r = await flood.post(
                "/api/auth/challenge",
                json={"address": f"0x{i:040x}"},
                headers=_from("198.51.100.1"),
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert set(statuses) == {200, 429}, statuses
        assert statuses[200] >= 1_000 and statuses[429] >= 1, statuses
        refusal(r, 429, "rate_limited")
        # The victim's challenge is as good as before the flood: the login works.
        message = victim.login_message(pending)
        r = await victim.post_login(message, victim.sign_message(message))
        assert r.status_code == 200, r.text


async def test_a_login_flood_ends_nobodys_session(tmp_path: Path) -> None:
    """Sessions are signed tokens: there is no book to fill, so logging in again and again
    (one client, or one address) ends no other session, its own earlier ones included."""
    async with serving(tmp_path, server__trusted_proxies=["127.0.0.1"]) as server:

        async def login(player: Player, ip: str) -> str:
            r = await player.http.post(
                "/api/auth/challenge", json={"address": player.account.address}, headers=_from(ip)
            )
            assert r.status_code == 200, r.text
            message = player.login_message(r.json())
            r = await player.http.post(
                "/api/auth/login",
                json={"message": message, "signature": player.sign_message(message)},
                headers=_from(ip),
            )
            assert r.status_code == 200, r.text
            token: str = r.json()["token"]
            return token

        async def alive(player: Player, token: str) -> bool:
            r = await player.http.get("/api/balance", headers={"Authorization": f"Bearer {token}"})
            return r.status_code == 200

        legit = server.player()
        legit_token = await login(legit, "203.0.113.7")
        flooder = server.player()
        tokens = [await login(flooder, "198.51.100.1") for _ in range(20)]
        others = [(p, await login(p, "198.51.100.1")) for p in [server.player() for _ in range(5)]]
        assert len(set(tokens)) == 20
        assert await alive(legit, legit_token)
        assert all([await alive(flooder, t) for t in tokens])
        assert all([await alive(p, t) for p, t in others])


async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    limits = {"limits__challenge_rate_per_s": 0.01, "limits__challenge_burst": 2}
    body = {"address": "0x" + "ab" * 20}
    async with serving(tmp_path, **limits) as server:
        # Not behind a trusted proxy: a header naming new clients is no way around the limit.
        client = server.http()
        statuses = [
            (
                await client.post("/api/auth/challenge", json=body, headers=_from(f"10.9.0.{i}"))
            ).status_code
            for i in range(4)
        ]
        assert statuses == [200, 200, 429, 429]
    (tmp_path / "proxied").mkdir()
    async with serving(
        tmp_path / "proxied", server__trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"], **limits
    ) as server:
        client = server.http()

        async def status(xff: str) -> int:
            r = await client.post("/api/auth/challenge", json=body, headers=_from(xff))
            return r.status_code

        # The rightmost untrusted hop is the client; what it wrote to its left is ignored.
        assert [await status("1.1.1.1, 192.0.2.1") for _ in range(3)] == [200, 200, 429]
        assert await status("9.9.9.9, 192.0.2.1, 10.1.2.3") == 429  # same client via a proxy
        assert await status("192.0.2.2") == 200  # another client
        # IPv6 clients count per /64.
        assert [await status(f"2001:db8:1:2::{i}") for i in range(1, 4)] == [200, 200, 429]
        assert await status("2001:db8:1:3::1") == 200


async def test_a_made_up_method_never_mints_a_metric_series(server: Server) -> None:
    """h11 takes any token as a method; the request counter labels only HTTP's own methods, so
    a client sending a new one per request cannot grow the metrics without bound."""
    invented = [f"ZQ{i}X" for i in range(20)]
    async with httpx.AsyncClient(base_url=server.url) as client:
        for method in invented:
            r = await client.request(method, "/livez")
            assert 400 <= r.status_code < 500, (method, r.status_code)
        text = (await client.get("/metrics")).text
    assert not any(m in text for m in invented)
    assert 'method="other"' in text
