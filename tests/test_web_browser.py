"""The web client in a real browser (Debian's Chromium, driven by Playwright) against a real
`tap serve` process.

- A whole game: the page loads, the line moves, the dev wallet signs in, deposits, taps cells
  (keyboard and pointer), bets confirm and resolve, the breaker (admin override) pauses betting,
  a server restart is survived, phone width fits.
- The account protocol, frame by frame: an injected EIP-1193 wallet signs in (SIWE), then the
  page's WebSocket is routed to a script that answers taps the `ack: "commit"` way and the
  `bet_ack` way, with `balance` inside bet frames and standalone, rejections and errors, a 1013
  close (reconnect + HTTP resync), and a breaker open for a stale feed.

Screenshots of every step go to the test's tmp directory (`pytest --basetemp=DIR` keeps them
somewhere known); the frame times measured in the page are printed and saved beside them as
`frames.json`. Nothing here asserts on a timing except the issue's "confirmed within 3 s" bound.

Playwright never downloads a browser here: it launches /usr/bin/chromium (`.ci/run` installs
Debian's `chromium`). Without it the suite is skipped locally and fails under CI.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import VerifyKey

from tap import siwe
from tap.admission import bet_payload
from tests.procs import ROOT, SERVING, server_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_TOKEN = "web-admin-token-0123456789abcdef"
WAIT_MS = 10_000  # the bound on any single wait for the page
SETTLED_OR_CONFIRMED = re.compile("^(confirmed|won|lost)$")
# Expected while the server is down: the browser logs its failed reconnects and requests.
OFFLINE_NOISE = re.compile(r"WebSocket connection to|ERR_CONNECTION_REFUSED|status of 401|net::ERR")

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None


def _need_browser() -> None:
    missing = []
    if sync_playwright is None:
        missing.append("the playwright package (dev extra)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "browser suite needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI installs both: a skip there would hide a broken suite
        pytest.skip(message)


class TapProcess:
    """`tap serve` as a plain subprocess (this suite is synchronous: Playwright's sync API)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, within: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tap.runtime.cli", "serve"],
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + within
        buf = b""
        while not (m := SERVING.search(buf.decode(errors="replace"))):
            left = deadline - time.monotonic()
            assert left > 0, f"server did not announce its URL: {buf!r}\n{self.tail()}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            assert chunk or not ready, f"server exited: {buf!r}\n{self.tail()}"
            buf += chunk
        self.url = m.group(1)
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while c.get("/healthz").json()["status"] != "pass":  # breaker closed: bets taken
                assert time.monotonic() < deadline, f"server never ready\n{self.tail()}"
                time.sleep(0.1)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def admin_breaker(self, mode: str) -> None:
        r = httpx.post(
            self.url + "/admin/breaker",
            json={"mode": mode},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text


@pytest.fixture
def tap_env(tmp_path: Path) -> dict[str, str]:
    env = server_env(
        tmp_path,
        TAP__FEED__SIM_TICK_MS="250",  # the production tick rate: the page interpolates between
        TAP__MARKETS__0__COLUMN_MS="1000",  # short windows: a bet resolves within seconds
        # Calmer than the default 0.60: with 1 s columns, quotes near the price would otherwise
        # often move past the page's slippage guard between the grid frame and the tap.
        TAP__FEED__SIM_SIGMA="0.3",
        TAP__SERVER__LOG_LEVEL='"warning"',
    )
    env["TAP_ADMIN_TOKEN"] = ADMIN_TOKEN
    return env


@pytest.fixture
def browser() -> Iterator[Browser]:
    _need_browser()
    assert sync_playwright is not None
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Shots:
    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.n = 0

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        return path


# Installed before a tap: records every status each history row shows, in order, per nonce, as
# the DOM changes (a MutationObserver runs before the next task, so no state is missed).
WATCH_HISTORY = """() => {
  window.__seen = {};
  const note = (li) => {
    const k = li.dataset.nonce, s = li.dataset.status, seen = (window.__seen[k] ||= []);
    if (seen[seen.length - 1] !== s) seen.push(s);
  };
  document.querySelectorAll('#history li').forEach(note);
  const all = () => document.querySelectorAll('#history li').forEach(note);
  new MutationObserver(all).observe(
    document.getElementById('history'), {subtree: true, childList: true, attributes: true});
}"""

FRAME_TIMES = """async (ms) => {
  const deltas = [];
  await new Promise((done) => {
    let last = 0, start = 0;
    const step = (t) => {
      if (last) deltas.push(t - last);
      else start = t;
      last = t;
      if (t - start < ms) requestAnimationFrame(step); else done();
    };
    requestAnimationFrame(step);
  });
  deltas.sort((a, b) => a - b);
  const q = (p) => deltas[Math.min(deltas.length - 1, Math.floor(p * deltas.length))];
  const mean = deltas.reduce((a, b) => a + b, 0) / deltas.length;
  return {frames: deltas.length, mean_ms: mean, p50_ms: q(0.5), p95_ms: q(0.95),
          max_ms: deltas[deltas.length - 1]};
}"""


def tapped(page: Page, rows: int) -> None:
    """The tap made a bet: the history has `rows` rows (else say what the page answered)."""
    try:
        expect(page.locator("#history li")).to_have_count(rows)
    except AssertionError:
        notice = page.inner_text("#notice")
        raise AssertionError(f"no bet from the tap: notice {notice!r}") from None


def confirmed(page: Page, row: Locator) -> None:
    """The bet of this history row is confirmed (or already resolved) within 3 s of the tap."""
    try:
        expect(row).to_have_attribute("data-status", SETTLED_OR_CONFIRMED, timeout=3000)
    except AssertionError:
        raise AssertionError(
            f"not confirmed: {row.inner_text()!r}, notice {page.inner_text('#notice')!r}"
        ) from None


def canvas_png(page: Page) -> str:
    return str(page.evaluate("() => document.getElementById('board').toDataURL('image/png')"))


def statuses(page: Page) -> dict[str, str]:
    rows = page.eval_on_selector_all(
        "#history li", "els => els.map(e => [e.dataset.nonce, e.dataset.status])"
    )
    return {nonce: status for nonce, status in rows}


def test_a_player_plays_the_game_in_a_real_browser(
    browser: Browser, tap_env: dict[str, str], tmp_path: Path
) -> None:
    server = TapProcess(tap_env, tmp_path / "server.log")
    server.start()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    shot = Shots(page, tmp_path)
    try:
        # ── the page loads, connects, and the price line moves ──
        page.goto(server.url + "/")
        page.wait_for_selector("#conn[data-state='live']")
        expect(page.locator("#price")).not_to_have_text("—")
        first_price, first_canvas = page.inner_text("#price"), canvas_png(page)
        expect(page.locator("#price")).not_to_have_text(first_price)
        page.wait_for_timeout(300)
        assert canvas_png(page) != first_canvas  # the line scrolled and the grid moved
        shot("loaded")
        frames = page.evaluate(FRAME_TIMES, 3000)
        assert frames["frames"] > 0  # the page animates (how fast is reported, not asserted)
        (tmp_path / "frames.json").write_text(json.dumps(frames))
        print(f"\nframe times (rAF deltas over 3 s): {frames}\nscreenshots: {tmp_path}")

        # ── the page's own crypto matches the server's: SIWE text, EIP-191, Ed25519 payload ──
        check_browser_crypto(page)

        # ── dev wallet login, test funds ──
        assert page.is_visible("#login-dev") and page.is_visible("#dev-box .warn")
        assert not page.is_visible("#login-injected")  # no window.ethereum in this browser
        page.click("#login-dev")
        page.wait_for_selector("#signed-in:not([hidden])")
        assert page.inner_text("#wallet-kind").lower() == "dev wallet"
        address = page.inner_text("#address")
        assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address)
        shot("signed-in")
        page.click("#deposit")
        expect(page.locator("#available")).to_have_text("100.00")
        assert page.inner_text("#locked") == "0.00"
        shot("deposited")

        # ── one keyboard tap = one signed bet: pending at once, confirmed within 3 s ──
        page.evaluate(WATCH_HISTORY)
        page.focus("#board")
        page.keyboard.press("ArrowRight")  # one column later than the first open one,
        page.keyboard.press("ArrowUp")  # a row above the price's (its quote is never near 1×)
        page.keyboard.press("Enter")
        shot("tap-pending")
        tapped(page, 1)
        confirmed(page, page.locator("#history li").first)
        (nonce,) = statuses(page)
        seen = page.evaluate("window.__seen")[nonce]
        assert seen[:2] == ["pending", "confirmed"], seen
        expect(page.locator("#locked")).to_have_text("1.00")
        assert page.inner_text("#available") == "99.00"
        shot("tap-confirmed")

        # ── a pointer tap on a cell further ahead, at a larger stake ──
        page.click("#stakes button[data-amount='5000000']")
        box = page.locator("#board").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.82, box["y"] + box["height"] * 0.5)
        tapped(page, 2)
        confirmed(page, page.locator("#history li").first)
        shot("pointer-tap")

        # ── the first bet resolves, and the page shows it ──
        resolved = f"#history li[data-nonce='{nonce}']"
        page.wait_for_selector(
            f"{resolved}[data-status='won'], {resolved}[data-status='lost'], "
            f"{resolved}[data-status='void']",
            timeout=15_000,
        )
        outcome = page.get_attribute(resolved, "data-status")
        text = page.inner_text(resolved)
        assert (outcome == "won") == ("won +" in text), text
        shot(f"resolved-{outcome}")

        assert errors == [], errors  # page load, login, deposit, bets: no console error at all

        # ── breaker forced open: paused state, taps refused ──
        server.admin_breaker("open")
        page.wait_for_selector("#paused:not([hidden])")
        assert "Betting paused" in page.inner_text("#paused")
        before = len(statuses(page))
        page.focus("#board")
        page.keyboard.press("Enter")
        expect(page.locator("#notice")).to_contain_text("paused")
        page.wait_for_timeout(300)
        assert len(statuses(page)) == before  # nothing was sent
        shot("breaker-open")
        server.admin_breaker("auto")
        page.wait_for_selector("#paused", state="hidden")

        # ── a server restart: the page reconnects (backoff), signs in again, plays on ──
        port = server.port
        server.stop()
        page.wait_for_selector("#conn[data-state='offline']")
        shot("server-down")
        server = TapProcess({**tap_env, "TAP__SERVER__PORT": str(port)}, tmp_path / "server.log")
        server.start()
        # Bounded by the page's backoff (≤ 15 s between attempts) after a slow restart.
        page.wait_for_selector("#conn[data-state='live']", timeout=45_000)
        page.wait_for_selector("#signed-in:not([hidden])")
        assert page.inner_text("#address") == address  # same dev wallet
        expect(page.locator("#available")).not_to_have_text("—")
        count = len(statuses(page))
        page.focus("#board")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        tapped(page, count + 1)
        confirmed(page, page.locator("#history li").first)
        shot("after-restart")
        unexpected = [e for e in errors if not OFFLINE_NOISE.search(e)]
        assert unexpected == [], unexpected

        # ── phone width: no horizontal scrolling, the board still fits ──
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot("phone")
    finally:
        page.close()
        server.stop()


def check_browser_crypto(page: Page) -> None:
    """Sign in the page with fixed keys, then verify in Python: the SIWE text is tap.siwe's, the
    EIP-191 signature recovers the dev wallet's address, the bet signature verifies over
    tap.admission.bet_payload."""
    result: dict[str, Any] = page.evaluate(
        """async () => {
          const w = await import('/web/js/wallet.js');
          const secret = new Uint8Array(32).fill(7);
          const challenge = {domain: 'example.test:8080', uri: 'http://example.test:8080',
            chain_id: 31337, nonce: 'abcDEF0123456789', issued_at: '2026-01-02T03:04:05.678Z',
            expiration_time: '2026-01-02T03:09:05.678Z'};
          localStorage.setItem('tap.devWallet.v1', '11'.repeat(32));
          const dev = w.devWallet({create: false});
          const key = w.newSessionKey();
          const message = w.siweMessage(challenge, dev.address, key.publicHex);
          const bet = {cell_id: 'BTC-USD:123:456', amount: 1000000, nonce: 'n0nce-0123456789',
            timestamp: 1767323045678, chain_id: 31337, min_multiplier_bps: 10500,
            address: dev.address};
          const out = {address: dev.address, message, signature: await dev.signMessage(message),
            sessionKey: key.publicHex, bet, betSignature: w.signBet(key.secret, bet)};
          localStorage.removeItem('tap.devWallet.v1');
          return out;
        }"""
    )
    expected_address = Account.from_key(bytes([0x11] * 32)).address
    assert result["address"] == expected_address  # EIP-55 checksummed, from the same key
    assert result["message"] == siwe.login_message(
        domain="example.test:8080",
        address=expected_address,
        uri="http://example.test:8080",
        chain_id=31337,
        nonce="abcDEF0123456789",
        issued_at_ms=siwe.iso_to_ms("2026-01-02T03:04:05.678Z"),
        expiration_ms=siwe.iso_to_ms("2026-01-02T03:09:05.678Z"),
        session_key_hex=result["sessionKey"],
    )
    recovered = Account.recover_message(
        encode_defunct(text=result["message"]), signature=result["signature"]
    )
    assert recovered == expected_address
    bet = result["bet"]
    payload = bet_payload(
        bet["chain_id"],
        bet["address"],
        bet["cell_id"],
        bet["amount"],
        bet["nonce"],
        bet["timestamp"],
        bet["min_multiplier_bps"],
    )
    VerifyKey(bytes.fromhex(result["sessionKey"])).verify(
        payload, bytes.fromhex(result["betSignature"])
    )


# ── the account protocol, from a scripted WebSocket ─────────────────────────────────────────


class ScriptedWs:
    """Stands in for the server's /ws (Playwright routes the page's WebSocket here; HTTP still
    goes to the real server): records what the page sends, sends what the test scripts."""

    def __init__(self, page: Page) -> None:
        self.routes: list[Any] = []
        self.received: list[dict[str, Any]] = []
        page.route_web_socket(re.compile(r"/ws$"), self._connected)

    def _connected(self, route: Any) -> None:
        self.routes.append(route)
        route.on_message(lambda message: self.received.append(json.loads(message)))

    def send(self, **frame: Any) -> None:
        self.routes[-1].send(json.dumps(frame))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.received if f["type"] == kind]


def market_frames(ws: ScriptedWs, column_ms: int) -> int:
    """A grid of open cells around 100,000.00 (multiplier 2.50×) and a tick; returns the first
    placeable column."""
    now = int(time.time() * 1000)
    c = now // column_ms
    price = 10_000_000
    cells = [
        {
            "cell_id": f"BTC-USD:{col}:{row}",
            "t_start": col * column_ms,
            "t_end": (col + 1) * column_ms,
            "price_lo": row * 1000,
            "price_hi": (row + 1) * 1000,
            "multiplier_bps": 25_000,
            "placeable": col >= c + 2,
        }
        for col in range(c + 1, c + 13)
        for row in range(price // 1000 - 8, price // 1000 + 8)
    ]
    ws.send(type="price", symbol="BTC-USD", ts=now, price=price)
    ws.send(
        type="grid",
        symbol="BTC-USD",
        as_of=now,
        price=price,
        volatility=0.3,
        house_edge_bps=500,
        monitoring_interval_ms=250,
        breaker="closed",
        cells=cells,
    )
    return c + 2


def bet(place: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    return {
        "bet_id": "b-" + place["nonce"],
        "address": "0x" + "00" * 20,
        "cell_id": place["cell_id"],
        "amount": place["amount"],
        "multiplier_bps": 25_000,
        "nonce": place["nonce"],
        "status": status,
        "accepted_at": place["timestamp"],
        **extra,
    }


COLUMN_MS = 5000


def test_an_injected_wallet_signs_in_and_the_page_follows_the_account_protocol(
    browser: Browser, tap_env: dict[str, str], tmp_path: Path
) -> None:
    # 5 s columns: a scripted grid stays placeable from the frame to the keypress, however slow
    # the machine.
    server = TapProcess({**tap_env, "TAP__MARKETS__0__COLUMN_MS": "5000"}, tmp_path / "server.log")
    server.start()
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    ws = ScriptedWs(page)
    # An injected EIP-1193 wallet: the page asks it for an account and a personal_sign; the key
    # stays in Python (eth-account signs), as it would stay in a browser extension.
    account = Account.create()
    asked: list[str] = []

    def wallet_request(method: str, params: list[str]) -> Any:
        asked.append(method)
        if method == "eth_requestAccounts":
            return [account.address.lower()]
        assert method == "personal_sign" and params[1].lower() == account.address.lower()
        signed = account.sign_message(encode_defunct(hexstr=params[0]))
        return "0x" + bytes(signed.signature).hex()

    page.expose_function("__walletRequest", wallet_request)
    page.add_init_script(
        "window.ethereum = {request: ({method, params}) => window.__walletRequest(method, params)};"
    )
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url.removeprefix(server.url)))
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    shot = Shots(page, tmp_path)
    history = page.locator("#history li")

    def tap() -> dict[str, Any]:
        before = len(ws.of_type("place_bet"))
        rows = history.count()
        market_frames(ws, COLUMN_MS)
        page.focus("#board")
        page.keyboard.press("Enter")
        expect(history).to_have_count(rows + 1)
        expect(history.first).to_have_attribute("data-status", "pending")
        deadline = time.monotonic() + WAIT_MS / 1000
        while len(ws.of_type("place_bet")) == before:
            assert time.monotonic() < deadline, "no place_bet frame"
            page.wait_for_timeout(20)
        return ws.of_type("place_bet")[-1]

    try:
        page.goto(server.url + "/")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        ws.send(type="breaker", state="closed", reason="recovered")
        market_frames(ws, COLUMN_MS)
        expect(page.locator("#login-injected")).to_be_visible()
        expect(page.locator("#dev-box")).to_be_hidden()  # a real wallet is there: no dev wallet
        page.click("#login-injected")
        expect(page.locator("#signed-in")).to_be_visible()
        assert asked == ["eth_requestAccounts", "personal_sign"]
        assert page.inner_text("#address") == account.address
        assert page.inner_text("#wallet-kind").lower() == "wallet"
        page.click("#deposit")
        expect(page.locator("#available")).to_have_text("100.00")  # the real server's balance
        assert ws.of_type("auth")
        assert any("account" in f["channels"] for f in ws.of_type("subscribe"))

        # ack:"commit" style: no bet_ack; bet_confirmed carries the req_id and the balance.
        place = tap()
        session = page.evaluate("() => JSON.parse(sessionStorage.getItem('tap.session.v1'))")
        payload = bet_payload(
            place["chain_id"],
            session["address"],
            place["cell_id"],
            place["amount"],
            place["nonce"],
            place["timestamp"],
            place["min_multiplier_bps"],
        )
        VerifyKey(bytes.fromhex(session["publicHex"])).verify(
            payload, bytes.fromhex(place["signature"])
        )
        assert place["req_id"] == place["nonce"] and place["amount"] == 1_000_000
        assert place["min_multiplier_bps"] == 25_000 * 3 // 4  # the slippage guard
        ws.send(
            type="bet_confirmed",
            req_id=place["req_id"],
            bet=bet(place, "confirmed", confirmed_at=place["timestamp"] + 5),
            balance={"available": 99_000_000, "locked": 1_000_000},
        )
        expect(history.first).to_have_attribute("data-status", "confirmed")
        expect(page.locator("#available")).to_have_text("99.00")
        expect(page.locator("#locked")).to_have_text("1.00")
        ws.send(
            type="bet_resolved",
            bet=bet(
                place,
                "won",
                payout=2_500_000,
                decided_by={"ts": place["timestamp"] + 900, "price": 10_000_100},
                reason="touch",
            ),
            balance={"available": 101_500_000, "locked": 0},
        )
        expect(history.first).to_have_attribute("data-status", "won")
        expect(history.first).to_contain_text("won +2.50")
        expect(page.locator("#available")).to_have_text("101.50")
        shot("scripted-won")

        # bet_ack flow, then bet_rejected with its reason; balance as a standalone frame.
        place = tap()
        ws.send(type="bet_ack", req_id=place["req_id"], bet=bet(place, "pending"))
        ws.send(type="bet_rejected", bet=bet(place, "rejected"), reason="insufficient_funds")
        expect(history.first).to_have_attribute("data-status", "rejected")
        expect(history.first).to_contain_text("insufficient funds")
        ws.send(type="balance", available=123_000_000, locked=0)
        expect(page.locator("#available")).to_have_text("123.00")

        # An admission error answers the tap with its code.
        place = tap()
        ws.send(
            type="error",
            req_id=place["req_id"],
            error={"code": "cell_not_placeable", "message": "column 5 is locked"},
        )
        expect(history.first).to_have_attribute("data-status", "rejected")
        expect(history.first).to_contain_text("cell closed")
        shot("scripted-rejected")

        # Close 1013: the page reconnects by itself and resyncs over HTTP.
        place = tap()  # left pending: the server (which never saw it) has no trace of it
        requests.clear()
        ws.routes[-1].close(code=1013, reason="fell behind")
        expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        assert len(ws.routes) == 2
        expect(page.locator("#available")).to_have_text("100.00")  # the ledger's, over HTTP
        assert "/api/balance" in requests and any(r.startswith("/api/bets?") for r in requests)
        row = page.locator(f"#history li[data-nonce='{place['nonce']}']")
        expect(row).to_have_attribute("data-status", "rejected")
        expect(row).to_contain_text("not sent")
        auths = ws.of_type("auth")
        assert len(auths) == 2 and auths[-1]["token"] == session["token"]  # signed in again

        # Breaker open (feed stale): the paused state, and a tap sends nothing.
        ws.send(type="breaker", state="open", reason="stale_feed")
        expect(page.locator("#paused")).to_be_visible()
        expect(page.locator("#paused-text")).to_have_text("Betting paused: price feed stale")
        sent = len(ws.of_type("place_bet"))
        page.focus("#board")
        page.keyboard.press("Enter")
        expect(page.locator("#notice")).to_contain_text("tap refused")
        assert len(ws.of_type("place_bet")) == sent
        shot("scripted-paused")
        # The one expected console error: the by-nonce lookup of the bet that was never sent.
        assert [e for e in errors if "status of 404" not in e] == [], errors
        assert any(r.startswith("/api/bets/by-nonce/") for r in requests)
    finally:
        page.close()
        server.stop()
