"""The web client in a real browser (Debian's Chromium, driven by Playwright) against a real
`tap serve` process: a player loads the page, signs in with the dev wallet, deposits, taps cells
(keyboard and pointer), watches bets confirm and resolve, sees the breaker pause betting, and
survives a server restart.

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
            while c.get("/readyz").status_code != 200:
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
        page.keyboard.press("ArrowRight")  # one column later than the first open one
        page.keyboard.press("Enter")
        shot("tap-pending")
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
        expect(page.locator("#history li")).to_have_count(2)
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
        page.wait_for_selector("#conn[data-state='live']", timeout=20_000)
        page.wait_for_selector("#signed-in:not([hidden])")
        assert page.inner_text("#address") == address  # same dev wallet
        expect(page.locator("#available")).not_to_have_text("—")
        count = len(statuses(page))
        page.focus("#board")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("Enter")
        expect(page.locator("#history li")).to_have_count(count + 1)
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
