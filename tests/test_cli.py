"""The command line's own decisions: which log level each command runs at."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest

from tap.config import load_config
from tap.runtime import cli, logs

ROOT = Path(__file__).resolve().parent.parent


class Recorded:
    def __init__(self) -> None:
        self.levels: list[int] = []
        self.as_json: list[bool] = []
        self.ran: list[str] = []

    def configure(self, level: int, *, as_json: bool) -> None:
        self.levels.append(level)
        self.as_json.append(as_json)

    def command(self, args: argparse.Namespace) -> int:
        self.ran.append(args.command)
        return 0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    """`logs.configure` and every command replaced by recorders: nothing starts."""
    rec = Recorded()
    monkeypatch.setattr(logs, "configure", rec.configure)
    for name in cli.COMMANDS:
        monkeypatch.setitem(cli.COMMANDS, name, rec.command)
    for key in [k for k in os.environ if k.startswith("TAP__")]:
        monkeypatch.delenv(key)
    return rec


@pytest.mark.parametrize(
    ("setting", "level"),
    [("debug", logging.DEBUG), ("warning", logging.WARNING), ("ERROR", logging.ERROR)],
)
def test_serve_logs_at_the_configured_level(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch, setting: str, level: int
) -> None:
    monkeypatch.setenv("TAP__SERVER__LOG_LEVEL", f'"{setting}"')
    assert cli.main(["serve"]) == 0
    assert recorded.levels == [level]
    assert recorded.ran == ["serve"]


def test_serve_reads_the_level_from_the_config_file(recorded: Recorded) -> None:
    assert cli.main(["--config", str(ROOT / "configs" / "test.toml"), "serve"]) == 0
    assert recorded.levels == [logging.WARNING]  # test.toml says "warning"


def test_other_commands_log_at_info_whatever_the_server_level(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAP__SERVER__LOG_LEVEL", '"error"')
    assert cli.main(["check"]) == 0
    assert cli.main(["migrate"]) == 0
    assert recorded.levels == [logging.INFO, logging.INFO]
    assert recorded.as_json == [False, False]  # a report for a terminal, not a log stream


def test_serve_logs_json_lines(recorded: Recorded) -> None:
    assert cli.main(["serve"]) == 0
    assert recorded.as_json == [True]


def test_serve_with_a_bad_level_is_a_configuration_error(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TAP__SERVER__LOG_LEVEL", '"loud"')
    assert cli.main(["serve"]) == 2
    assert recorded.ran == []
    assert "server.log_level" in capsys.readouterr().err


def test_a_play_money_server_says_so_and_the_production_example_does_not() -> None:
    dev = cli.play_money_warnings(load_config(environ={}))
    assert any("SIMULATED" in w for w in dev)
    assert any("mock_deposits" in w for w in dev)
    prod = load_config(ROOT / "configs" / "prod.example.toml", environ={})
    assert cli.play_money_warnings(prod) == []


def test_serve_with_a_short_session_secret_is_a_configuration_error_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs, "configure", lambda level, *, as_json: None)
    monkeypatch.setenv("TAP__SERVER__DB_PATH", f'"{tmp_path / "tap.db"}"')
    monkeypatch.setenv("TAP_SESSION_SECRET", "too short")
    assert cli.main(["serve"]) == 2
    assert "TAP_SESSION_SECRET" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no database, no secret file: nothing started
