from pathlib import Path

import pytest

from tap.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_defaults_decode() -> None:
    cfg = load_config(environ={})
    assert cfg.markets[0].symbol == "BTC-USD"
    assert cfg.markets[0].column_ms == 5000
    assert cfg.breaker.stale_after_ms == 10_000
    assert cfg.payments.mock_deposits is True


def test_file_then_environment_override() -> None:
    cfg = load_config(
        ROOT / "configs" / "test.toml",
        environ={"TAP__SERVER__PORT": "9999", "TAP__MARKETS__0__COLUMN_MS": "1000"},
    )
    assert cfg.server.port == 9999
    assert cfg.markets[0].column_ms == 1000
    assert cfg.pricing.refresh_ms == 100  # from test.toml


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"column_ms"):
        load_config(environ={"TAP__MARKETS__0__COLUMN_MS": '"soon"'})


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_config(environ={"TAP__SERVER__COLOUR": "blue"})


def test_out_of_range_names_key_value_and_expectation() -> None:
    with pytest.raises(ConfigError, match=r"house_edge_bps = 12000: expected 0..9999"):
        load_config(environ={"TAP__MARKETS__0__HOUSE_EDGE_BPS": "12000"})


def test_bad_env_path_is_explained() -> None:
    with pytest.raises(ConfigError, match="TAP__MARKETS__7__ROWS"):
        load_config(environ={"TAP__MARKETS__7__ROWS": "3"})


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "WARNING"])
def test_server_log_level_accepts_the_four_levels(level: str) -> None:
    assert load_config(environ={"TAP__SERVER__LOG_LEVEL": f'"{level}"'}).server.log_level == level


@pytest.mark.parametrize("level", ["verbose", "critical", "", "20"])
def test_server_log_level_refuses_anything_else(level: str) -> None:
    with pytest.raises(ConfigError, match=r"server.log_level = .*: expected one of debug/info"):
        load_config(environ={"TAP__SERVER__LOG_LEVEL": f'"{level}"'})


def test_server_data_dir_is_gone() -> None:
    # Nothing ever read it; an old config that still sets it is told so instead of ignored.
    with pytest.raises(ConfigError, match="data_dir"):
        load_config(environ={"TAP__SERVER__DATA_DIR": '"data"'})


def test_monitoring_interval_is_the_feeds_own_or_a_positive_override() -> None:
    assert load_config(environ={}).pricing.monitoring_interval_ms == 0  # the feed's own
    with pytest.raises(ConfigError, match=r"pricing.monitoring_interval_ms = -250"):
        load_config(environ={"TAP__PRICING__MONITORING_INTERVAL_MS": "-250"})
