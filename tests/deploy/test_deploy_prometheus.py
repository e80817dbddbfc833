"""Prometheus configuration and alert rules: promtool checks and unit tests."""

from __future__ import annotations

import subprocess
import sys

import yaml
from deploy_helpers import (
    DESIGN_SAMPLES,
    EXTERNAL_SAMPLES,
    OPTIONAL_SAMPLES,
    PROMETHEUS_DIR,
    REPO,
    metric_names,
)

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "tests" / "alerts_test.yml"

#: The alerts issue 6 asks for, by name.
REQUIRED_ALERTS = {
    "TrdqServerDown",
    "TrdqNotReady",
    "TrdqImageLatencyHigh",
    "TrdqQueueSaturated",
    "TrdqHighErrorRate",
    "TrdqDeviceMemoryNearLimit",
    "TrdqCalibrationCacheInvalid",
}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_promtool_check_config(promtool):
    result = _run([promtool, "check", "config", str(CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool):
    result = _run([promtool, "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool):
    result = _run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_alerts_present_and_tested():
    names = {rule["alert"] for rule in _rules()}
    assert REQUIRED_ALERTS <= names, REQUIRED_ALERTS - names
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert names <= tested, f"alerts without a promtool unit test: {names - tested}"


def test_alerts_use_design_metric_names():
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - DESIGN_SAMPLES - EXTERNAL_SAMPLES - OPTIONAL_SAMPLES
        assert not unknown, f"{rule['alert']} uses metrics outside DESIGN.md: {unknown}"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_prometheusrule_matches_alerts():
    """deploy/k8s/base/prometheusrule.yaml is generated from alerts.yml and must not drift."""
    script = PROMETHEUS_DIR / "to_prometheusrule.py"
    result = _run([sys.executable, str(script), "--check"])
    assert result.returncode == 0, result.stderr
    rule = yaml.safe_load((REPO / "deploy/k8s/base/prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
