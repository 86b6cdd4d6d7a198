"""`tap serve` logs JSON lines, and one request id follows a bet from its 202 to its commit.

A real server process: every line it writes to stderr must be one JSON object with `time`,
`level`, `logger` and `msg`; a bet placed with `X-Request-ID: R` must leave an access-log line
(`msg: request`, status 202) and a `bet accepted` line under R, and later a `bet confirmed` line
under R naming the same bet, though the commit happens in the writer's task, not the request's.
"""

from __future__ import annotations

import io
import json
import logging
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tap.runtime import logs
from tests.procs import Client, ServerProcess, server_env

pytestmark = pytest.mark.slow


def json_lines(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))  # a line that is not JSON fails the test here
    return records


async def test_serve_logs_json_and_one_request_id_follows_a_bet_to_its_commit(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "server.log"
    server = ServerProcess(server_env(tmp_path), log_path=log_path)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            player = Client(http)
            await player.login()
            await player.deposit(10_000_000)
            with trio.fail_after(20):
                while True:
                    grid = (await http.get("/api/grid/BTC-USD")).json()
                    cutoff = grid["as_of"] + 2 * 5000
                    cells = [c for c in grid["cells"] if c["placeable"] and c["t_start"] >= cutoff]
                    if grid["breaker"] == "closed" and cells:
                        break
                    await trio.sleep(0.1)
            # The row nearest the price: an edge row may leave the published rows if the
            # simulated price moves a row before the bet lands (seen once under load).
            middle = min(cells, key=lambda c: abs(c["price_lo"] - grid["price"]))
            body = player.bet(middle["cell_id"], 1_000_000, grid["as_of"])
            r = await http.post(
                "/api/bets",
                json=body,
                headers={**player.headers, "X-Request-ID": "trace-bet-1"},
            )
            assert r.status_code == 202, r.text
            bet_id = r.json()["bet_id"]
            with trio.fail_after(10):
                while True:
                    bet = (await http.get(f"/api/bets/{bet_id}", headers=player.headers)).json()
                    if bet["status"] != "pending":
                        break
                    await trio.sleep(0.05)
            assert bet["status"] == "confirmed"
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0

    records = json_lines(log_path)
    assert len(records) > 5
    for record in records:
        assert {"time", "level", "logger", "msg"} <= set(record), record
        assert record["time"].endswith("Z")
    traced = [r for r in records if r.get("request_id") == "trace-bet-1"]
    assert any(r["msg"] == "request" and r["status"] == 202 for r in traced), traced
    assert any(r["msg"] == "bet accepted" and r["bet_id"] == bet_id for r in traced), traced
    assert any(r["msg"] == "bet confirmed" and r["bet_id"] == bet_id for r in traced), traced
    config = next(r for r in records if r["msg"] == "effective config")
    assert config["config"]["server"]["port"] == 0  # structured, not a string of JSON


def test_a_message_with_quotes_stays_one_valid_json_value() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("tests.test_logs.quotes")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = logs.REQUEST_ID.set("rid-1")
    try:
        logger.warning('path "%s"\n', '/a"b')
    finally:
        logs.REQUEST_ID.reset(token)
    logger.info("plain", extra={"request_id": "given"})
    logger.info("none")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == 'path "/a"b"\n'
    assert (first["request_id"], first["level"], first["logger"]) == (
        "rid-1",
        "WARNING",
        "tests.test_logs.quotes",
    )
    assert second["request_id"] == "given"
    assert "request_id" not in third
