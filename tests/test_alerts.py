"""Alert rules and the Grafana dashboard are valid and say what they claim.

`promtool` (Debian package `prometheus`, installed by `.ci/run`) checks the rules and runs their
unit tests: each alert fires on the series that should fire it, with its labels and annotations,
and nothing fires on a healthy deployment. The dashboard is checked as Grafana provisions it
(JSON, unique panel ids, the provisioned datasource) and each panel's PromQL is parsed by
promtool. Outside CI a missing promtool skips the promtool tests; in CI it is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import Server

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules.yml"
RULE_TESTS = [PROM / "rules_test.yml", PROM / "rules_test_deadman.yml"]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tap.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# What the alerting must cover (issue 13), as the metric each alert's expression must read.
REQUIRED_ALERT_METRICS = {
    "5xx rate": "tap_http_requests_total",
    "p99 latency": "tap_http_request_duration_seconds_bucket",
    "feed stale": "tap_feed_staleness_seconds",
    "breaker open": "tap_breaker_open",
    "archive older than 8 days": "tap_last_successful_archive_timestamp_seconds",
    "integrity violations": "tap_integrity_violations",
    "backup older than 2 h": "tap_last_successful_backup_timestamp_seconds",
    "disk < 15 % free": "tap_disk_free_bytes",
    "writer queue > 50 % full": "tap_batch_queue_capacity",
    "Redis errors": "tap_redis_errors_total",
}
# What the dashboard must show, as a metric one of its panels reads.
REQUIRED_PANEL_METRICS = {
    "request rate": "tap_http_requests_total",
    "latency quantiles": "tap_http_request_duration_seconds_bucket",
    "bets by status": "tap_bets_total",
    "resolutions": "tap_bets_resolved_total",
    "breaker": "tap_breaker_open",
    "feed staleness": "tap_feed_staleness_seconds",
    "queue depth": "tap_batch_queue_depth",
    "batch size": "tap_batch_size_bucket",
    "commit time": "tap_commit_duration_seconds_bucket",
    "WS clients": "tap_ws_clients",
    "Redis": "tap_redis_errors_total",
}
METRIC_NAME = re.compile(r"\b(tap_[a-z0-9_]+|up)\b")
SERIES_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("", "_total")}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not installed (apt-get install prometheus; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


# ── rules ───────────────────────────────────────────────────────────────────────────────────


def test_promtool_checks_the_rules() -> None:
    out = run_promtool("check", "rules", RULES.name)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fire_each_alert_and_nothing_when_healthy() -> None:
    out = run_promtool("test", "rules", *(p.name for p in RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_unit_tests_fail_when_a_rule_is_broken(tmp_path: Path) -> None:
    broken = RULES.read_text(encoding="utf-8").replace(
        "max(tap_integrity_violations) > 0", "max(tap_integrity_violations) > 5"
    )
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / "rules.yml").write_text(broken, encoding="utf-8")
    shutil.copy(PROM / "rules_test.yml", tmp_path)
    out = run_promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert out.returncode != 0
    assert "TapIntegrityViolations" in out.stdout + out.stderr


def test_every_alert_is_unit_tested_firing() -> None:
    tested: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert {rule["alert"] for rule in alert_rules()} == tested


def test_the_alerts_cover_what_operations_needs() -> None:
    read = {name for rule in alert_rules() for name in METRIC_NAME.findall(rule["expr"])}
    missing = {
        what: metric for what, metric in REQUIRED_ALERT_METRICS.items() if metric not in read
    }
    assert missing == {}


def test_every_alert_has_a_severity_summary_and_a_runbook_in_operations_md() -> None:
    operations = (ROOT / "OPERATIONS.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).strip().replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", operations, flags=re.MULTILINE)
    }
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "OPERATIONS.md" and anchor in anchors, (rule["alert"], anchor)


# ── dashboard ───────────────────────────────────────────────────────────────────────────────


def test_dashboard_is_provisionable_json() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    uid = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"][0]["uid"]
    for panel in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_dashboard_shows_what_operations_needs() -> None:
    read = {name for _, expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    missing = {
        what: metric for what, metric in REQUIRED_PANEL_METRICS.items() if metric not in read
    }
    assert missing == {}


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    # promtool has no offline "parse this expression"; a recording rule per query is parsed
    # by `check rules`, which names the rule of any expression that does not parse.
    exprs = dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel_{i}", "expr": e} for i, (_, e) in enumerate(exprs)],
            }
        ]
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    out = run_promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(exprs)} rules found" in out.stdout


def test_a_query_that_does_not_parse_is_caught(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "x", "rules": [{"record": "r", "expr": "sum(rate(x[1m])"}]}]}
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    assert run_promtool("check", "rules", "bad.yml", cwd=tmp_path).returncode != 0


# ── against the server ──────────────────────────────────────────────────────────────────────


def exported_names(metrics_text: str) -> set[str]:
    """Every series name a scrape can carry, from the `# TYPE` lines: a histogram `x` gives
    `x_bucket`, `x_count`, `x_sum`; labelled families appear before their first sample."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, flags=re.MULTILINE):
        names.update(name + suffix for suffix in SERIES_SUFFIXES.get(kind, ("",)))
    return names


def test_exported_names_reads_type_lines() -> None:
    text = "# TYPE a_seconds histogram\n# TYPE b_total counter\n# TYPE c gauge\nc 1.0\n"
    assert exported_names(text) >= {"a_seconds_bucket", "a_seconds_sum", "b_total", "c"}
    assert "a_seconds" not in exported_names(text)


async def test_every_metric_the_rules_and_dashboard_read_is_exported(server: Server) -> None:
    text = (await server.http().get("/metrics")).text
    exported = exported_names(text) | {"up"}  # `up` is Prometheus's own, per target
    read = {name for rule in alert_rules() for name in METRIC_NAME.findall(rule["expr"])}
    read |= {name for _, expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert read - exported == set()
    assert re.search(r'^tap_build_info\{.*version="[^"]+".*\} 1\.0$', text, re.MULTILINE)
    assert re.search(r"^tap_db_size_bytes [1-9]", text, re.MULTILINE)
    assert re.search(r"^tap_disk_free_bytes [1-9]", text, re.MULTILINE)
