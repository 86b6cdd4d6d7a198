"""CI smoke: the load generator's `smoke` scenario against a real tap server started on loopback.

Functional, not a benchmark: it asserts that nothing failed on the server's side (no 5xx, no
timeout, no dropped connection) and that every bet tap accepted with a 202 was then confirmed on
the player's WebSocket — over a short run (≈ 13 s of load) by a handful of users tapping over
both HTTP and the WebSocket. No timing thresholds.

tap is started through `loadgen.peers.targets.start_tap_server` (`python -m tap.runtime.cli
migrate`,
then `serve`). Nothing here is skipped: a CLI or supervisor that does not import is a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.generator.scenario import load_scenario
from loadgen.peers.targets import start_tap_server

TEST_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "test.toml"

pytestmark = pytest.mark.slow


def test_the_cli_and_the_supervisor_import() -> None:
    """Fails at once (instead of after a server that never comes up) if `serve` cannot run."""
    import tap.runtime.cli
    import tap.runtime.supervisor

    assert "serve" in tap.runtime.cli.COMMANDS
    assert callable(tap.runtime.supervisor.run_server)


async def test_smoke_run_against_tap_has_no_server_errors_and_every_accepted_bet_is_confirmed(
    tmp_path: Path,
) -> None:
    from loadgen.generator.runner import run_scenario

    scenario = load_scenario("smoke")
    assert scenario.duration_s <= 20
    # The breaker starts open and closes after `hysteresis_ms` of healthy feed; 1 s instead of
    # 30 s gets the server ready sooner. Nothing else is changed from the test config.
    overrides = {"payments": {"mock_deposits": True}, "breaker": {"hysteresis_ms": 1000}}
    async with start_tap_server(None, overrides, tmp_path / "tap", config_path=TEST_CONFIG) as tap:
        report = await run_scenario(scenario, base_url=tap.base_url, server=tap)

    routes = report["routes"]
    bets = report["bets"]
    assert routes, "no bet was sent"
    for route, stats in routes.items():
        fives = {s: n for s, n in stats["statuses"].items() if s.startswith("5") or s == "0"}
        assert not fives, f"{route}: server errors or failed requests {fives} {stats['codes']}"
    assert bets["accepted"] > 0
    assert bets["unanswered"] == 0, f"never answered: {bets['unanswered_bet_ids']}"
    assert bets["confirmed"] == bets["accepted"], bets
    assert report["passed"], report["thresholds"]
