"""The PrometheusRule passes `promtool check rules`, and `promtool test rules` proves every alert fires on
the series that should fire it and stays silent on healthy ones. Runtime: a few seconds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from harness.promstack import MONITORING, REPO, rule_groups, tool

TESTS = sorted((MONITORING / "tests").glob("*.test.yaml"))
OPERATIONS = REPO / "docs" / "OPERATIONS.md"


def _alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}


def _rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "classifier.rules.yaml").write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    for test in TESTS:
        shutil.copy(test, tmp_path / test.name)
    return tmp_path


def test_promtool_check_rules(tmp_path):
    rules = _rules_dir(tmp_path) / "classifier.rules.yaml"
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(tmp_path):
    assert TESTS, "no promtool tests in monitoring/tests/"
    d = _rules_dir(tmp_path)
    result = subprocess.run(
        [tool("promtool"), "test", "rules", *[t.name for t in TESTS]],
        cwd=d,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    fires, silent = set(), set()
    for test_file in TESTS:
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    alerts = set(_alerts())
    assert alerts - fires == set(), "alerts without a test where they fire"
    assert alerts - silent == set(), "alerts without a test where they stay silent"


def test_every_alert_is_documented_and_routed():
    runbooks = OPERATIONS.read_text()
    section = runbooks.split("## Alert runbooks", 1)[1]
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        for key in ("summary", "description", "runbook_url"):
            assert rule["annotations"].get(key), f"{name} lacks {key}"
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/OPERATIONS.md#{name.lower()}", url
        # GitHub's anchor for "### ClassifierFoo" is "#classifierfoo".
        assert f"\n### {name}\n" in section, f"docs/OPERATIONS.md has no runbook heading for {name}"


def test_slo_burn_rates_use_the_documented_objectives():
    alerts = _alerts()
    assert "0.001" in alerts["ClassifierAvailabilityBurnRateFast"]["expr"]  # 99.9 %
    assert "0.010" in alerts["ClassifierLatencyBurnRateFast"]["expr"]  # 99 % under 500 ms
    for name in ("ClassifierAvailabilityBurnRateFast", "ClassifierLatencyBurnRateFast"):
        expr = alerts[name]["expr"]
        assert all(
            w in expr for w in ("ratio_rate1h", "ratio_rate5m", "ratio_rate6h", "ratio_rate30m", "14.4")
        )
    for name in ("ClassifierAvailabilityBurnRateSlow", "ClassifierLatencyBurnRateSlow"):
        expr = alerts[name]["expr"]
        assert all(w in expr for w in ("ratio_rate1d", "ratio_rate2h", "ratio_rate3d", "ratio_rate6h"))
