"""Operations endpoints of the real server: liveness, readiness, health, metrics, request ids,
security headers and the admin routes."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from tests.e2e import ADMIN_TOKEN, Server, connect_ws, outside, pick_cell, serving

ADMIN_ROUTES = [
    ("POST", "/admin/breaker", {"mode": "closed"}),
    ("POST", "/admin/credit", {"address": "0x" + "ab" * 20, "amount": 1, "reason": "x"}),
    ("POST", "/admin/archive", {}),
    ("GET", "/admin/integrity", None),
]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


async def test_readyz_is_this_process_while_breaker_and_feed_only_warn_in_healthz(
    tmp_path: Path,
) -> None:
    """Readiness used to fail while the breaker was open or the feed stale: both are the same
    for every process, so a load balancer took the whole fleet out at once, reads included.
    Now they are `warn` checks of /healthz, and /readyz is about this process only."""
    async with serving(tmp_path, breaker=None, price=None) as server:
        client = server.http()
        r = await client.get("/livez")
        assert r.status_code == 200
        assert r.json() == {"status": "pass"}
        assert r.headers["content-type"].startswith("application/health+json")

        # No price yet, breaker open since startup: the process serves (reads work).
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/health+json")
        assert r.json() == {
            "status": "pass",
            "checks": {"database": "pass", "redis": "pass", "accepting": "pass"},
        }
        r = await client.get("/healthz")
        assert r.status_code == 200
        health = r.json()
        assert health["status"] == "warn"
        assert health["checks"]["circuit_breaker"]["status"] == "warn"
        assert health["checks"]["circuit_breaker"]["state"] == "open"
        assert health["checks"]["price_feed"]["status"] == "warn"
        assert (await client.get("/api/markets")).status_code == 200

        server.push(10_000_000)
        await server.settled_feed()
        await server.set_breaker("closed")
        health = (await client.get("/healthz")).json()
        assert health["status"] == "pass", health
        assert {c["status"] for c in health["checks"].values()} == {"pass"}


async def test_a_stale_price_warns_in_healthz_and_the_process_stays_ready(tmp_path: Path) -> None:
    async with serving(tmp_path, price=None) as server:
        client = server.http()
        stale_after = server.cfg.breaker.stale_after_ms
        server.push(10_000_000, server.now() - stale_after - 5_000)  # an old price
        await server.settled_feed()
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        health = (await client.get("/healthz")).json()
        assert health["status"] == "warn"
        assert health["checks"]["price_feed"]["status"] == "warn"
        assert health["checks"]["price_feed"]["stale_for_ms"] >= stale_after
        assert health["checks"]["circuit_breaker"]["status"] == "pass"  # overridden closed
        server.push(10_000_000)
        await server.settled_feed()
        assert (await client.get("/healthz")).json()["status"] == "pass"


async def test_readyz_and_healthz_fail_when_the_writer_is_gone(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        client = server.http()
        server.running.services.writer_alive = lambda: False
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == "fail"
        assert int(r.headers["Retry-After"]) >= 1
        r = await client.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "fail"


async def test_healthz_has_the_documented_shape(server: Server) -> None:
    r = await server.http().get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "pass"
    assert isinstance(body["timestamp"], int)
    checks = body["checks"]
    assert checks["database"] == {"status": "pass"}
    assert checks["redis"] == {"status": "pass", "configured": False}
    assert checks["accepting"] == {"status": "pass"}
    assert checks["price_feed"]["last_update"] == server.feed_ts
    assert isinstance(checks["price_feed"]["stale_for_ms"], int)
    assert checks["circuit_breaker"]["status"] == "pass"
    assert checks["circuit_breaker"]["state"] == "closed"
    assert checks["batcher"] == {
        "status": "pass",
        "queue_depth": 0,
        "capacity": server.cfg.batcher.queue_size,
    }
    await server.set_breaker("open")
    body = (await server.http().get("/healthz")).json()
    assert body["status"] == "warn"
    assert body["checks"]["circuit_breaker"] == {
        "status": "warn",
        "state": "open",
        "reason": "override",
    }


async def test_metrics_expose_the_seed_metrics_and_move_with_traffic(server: Server) -> None:
    client = server.http()
    before = (await client.get("/metrics")).text
    player = server.player()
    await player.login()
    await player.deposit(10_000_000)
    cell = await pick_cell(server, min_lead_ms=5000)
    r = await player.place(cell_id=cell["cell_id"], amount=1_000_000, wait=5)
    assert r.status_code == 201
    bet_id = r.json()["bet_id"]
    async with connect_ws(server) as ws:
        await ws.ping()
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        clients = metric(text, "tap_ws_clients")
        assert clients == metric(before, "tap_ws_clients") + 1
    for name in (
        "tap_http_requests_total",
        "tap_http_request_duration_seconds_bucket",
        "tap_bets_total",
        "tap_batch_size_bucket",
        "tap_breaker_open",
        "tap_ws_clients",
        "tap_commit_duration_seconds_bucket",
        "tap_batch_queue_depth",
        "tap_feed_staleness_seconds",
        "tap_ticks_total",
    ):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    assert metric(text, "tap_bets_total", status="accepted", reason="") == (
        metric(before, "tap_bets_total", status="accepted", reason="") + 1
    )
    assert metric(text, "tap_bets_total", status="confirmed", reason="") == (
        metric(before, "tap_bets_total", status="confirmed", reason="") + 1
    )
    assert metric(text, "tap_breaker_open", symbol=server.symbol) == 0
    ok = metric(text, "tap_http_requests_total", route="/api/bets", method="POST", status="201")
    assert ok >= 1

    # A resolution is counted once, by outcome.
    await server.walk(cell["t_end"], outside(cell, server.market.row_height))
    with trio.fail_after(5):
        while (await player.get(f"/api/bets/{bet_id}")).json()["status"] != "lost":  # noqa: ASYNC110
            await trio.sleep(0.01)
    after = (await client.get("/metrics")).text
    assert metric(after, "tap_bets_resolved_total", outcome="lost") == (
        metric(before, "tap_bets_resolved_total", outcome="lost") + 1
    )


async def test_request_ids_are_echoed_or_generated_and_security_headers_set(
    server: Server,
) -> None:
    client = server.http()
    r = await client.get("/livez", headers={"X-Request-ID": "trace-abc.123"})
    assert r.headers["X-Request-ID"] == "trace-abc.123"
    for given in (None, "has spaces in it", "x" * 300, "<script>"):
        headers = {} if given is None else {"X-Request-ID": given}
        r = await client.get("/api/markets", headers=headers)
        rid = r.headers["X-Request-ID"]
        assert rid != given and re.fullmatch(r"[0-9a-f]{16}", rid), rid
    first = (await client.get("/livez")).headers["X-Request-ID"]
    second = (await client.get("/livez")).headers["X-Request-ID"]
    assert first != second
    for path in ("/livez", "/api/markets", "/api/bets", "/nope"):
        r = await client.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert "X-Request-ID" in r.headers
        assert "server" not in {k.lower() for k in r.headers}


async def test_admin_routes_are_404_when_no_token_is_configured(tmp_path: Path) -> None:
    async with serving(tmp_path, admin_token=None, breaker=None) as server:
        client = server.http()
        for method, path, body in ADMIN_ROUTES:
            for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
                r = await client.request(method, path, json=body, headers=headers)
                assert r.status_code == 404, (path, r.text)
                assert r.json()["error"]["code"] == "not_found"


async def test_admin_routes_refuse_a_missing_or_wrong_token(server: Server) -> None:
    client = server.http()
    for method, path, body in ADMIN_ROUTES:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
        ):
            r = await client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
    assert server.running.services.breaker_state(server.symbol) == "closed"


async def test_admin_credit_posts_an_adjustment_the_player_can_spend(server: Server) -> None:
    player = server.player()
    await player.login()
    r = await server.admin(
        "/admin/credit", {"address": player.account.address, "amount": 7_000_000, "reason": "promo"}
    )
    assert r.status_code == 201, r.text
    entry = r.json()["entry"]
    assert entry["kind"] == "adjustment"
    assert entry["amount"] == 7_000_000
    assert entry["address"] == player.address
    assert (await player.balance())["available"] == 7_000_000
    # The hot state heard it too: the credit is spendable at once.
    cell = await pick_cell(server, min_lead_ms=5000)
    r = await player.place(cell_id=cell["cell_id"], amount=7_000_000, wait=5)
    assert r.status_code == 201, r.text
    # A debit larger than what is available is refused; a fitting one is posted.
    r = await server.admin(
        "/admin/credit", {"address": player.address, "amount": -1, "reason": "fee"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_funds"
    r = await server.admin("/admin/credit", {"address": player.address, "amount": 0, "reason": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "amount_out_of_range", r.text
    for amount in (10**30, -(10**30), 2**63, 2**53):  # beyond the wire bounds: refused at decoding
        r = await server.admin(
            "/admin/credit", {"address": player.address, "amount": amount, "reason": "typo"}
        )
        assert r.status_code == 400, (amount, r.text)
        assert r.json()["error"]["code"] == "invalid_request" and "amount" in r.text
    r = await server.admin("/admin/credit", {"address": "0x12", "amount": 1, "reason": "x"})
    assert r.status_code == 400
    r = await server.admin("/admin/credit", {"address": player.address, "amount": 1})
    assert r.status_code == 400 and "reason" in r.json()["error"]["message"]
    r = await server.admin("/admin/breaker", {"mode": "sideways"})
    assert r.status_code == 400
    # The writer is still alive after all of that.
    r = await server.http().get("/healthz")
    assert r.json()["checks"]["database"]["status"] == "pass"
    assert (await player.balance())["locked"] == 7_000_000


async def test_admin_integrity_reports_a_consistent_ledger(server: Server) -> None:
    player = server.player()
    await player.login()
    await player.deposit(3_000_000)
    r = await server.http().get(
        "/admin/integrity", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    if server.running.services.integrity_fn is None:  # not wired in this process
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    else:
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "violations": []}
