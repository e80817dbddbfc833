"""The Grafana dashboard: generated JSON in sync, structure Grafana accepts, metric names from
DESIGN.md (and, when the server is importable, from its registry). Whether every panel's
PromQL parses and returns data is checked against a real Prometheus in
test_deploy_integration.py."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
from deploy_helpers import (
    DASHBOARD_JSON,
    DESIGN_COUNTERS,
    DESIGN_GAUGES,
    DESIGN_HISTOGRAMS,
    DESIGN_SAMPLES,
    EXTERNAL_SAMPLES,
    GRAFANA_DIR,
    SERVER_EXTRA_SAMPLES,
    dashboard_targets,
    metric_names,
)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def test_generated_json_is_in_sync():
    result = subprocess.run(
        [sys.executable, str(GRAFANA_DIR / "build_dashboard.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_structure(dashboard):
    assert dashboard["uid"] == "trdq-server" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "bargauge"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["description"] or panel["type"] in {"timeseries", "stat"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"


def test_variables(dashboard):
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "model"):
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"]
        assert var["allValue"] == ".*"
        assert var["query"]["query"].startswith("label_values(")
        assert f", {name})" in var["query"]["query"]
    # Every query filters by instance; those on model-labelled metrics by model too.
    model_labelled = {
        "trdq_stage_duration_seconds",
        "trdq_denoise_step_seconds",
        "trdq_quant_group_switches_total",
        "trdq_model_weight_bytes",
    }
    for title, target in dashboard_targets(dashboard):
        expr = target["expr"]
        assert 'instance=~"$instance"' in expr, title
        if any(name in expr for name in model_labelled):
            assert 'model=~"$model"' in expr, title


def test_queries_use_design_metric_names(dashboard):
    used: set[str] = set()
    for title, target in dashboard_targets(dashboard):
        names = metric_names(target["expr"])
        assert names, f"{title}: no metric found in {target['expr']}"
        unknown = names - DESIGN_SAMPLES - EXTERNAL_SAMPLES - SERVER_EXTRA_SAMPLES
        assert not unknown, f"{title} uses metrics outside DESIGN.md: {unknown}"
        used |= names
        for quantile in re.finditer(r"histogram_quantile\(", target["expr"]):
            assert "_bucket{" in target["expr"] and "le" in target["expr"], title
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    # Every metric of DESIGN.md section 3 is on the dashboard, and process RSS too.
    missing = (DESIGN_HISTOGRAMS | DESIGN_COUNTERS | DESIGN_GAUGES) - families
    assert not missing, f"metrics with no panel: {missing}"
    assert "process_resident_memory_bytes" in used


def test_issue_topics_have_panels(dashboard):
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in (
        "request rate",
        "error rate",
        "p50 / p95 / p99",
        "queue depth",
        "queue wait",
        "batch size",
        "step time by timestep group",
        "group switches",
        "images and video frames per second",
        "device memory",
        "weight bytes by component and dtype",
        "process memory",
        "calibration cache",
        "cancellations",
        "worker restarts",
    ):
        assert topic in titles, f"no panel for {topic!r}"


def test_names_match_the_server_registry(dashboard):
    """Cross-check against server/metrics.py: what the dashboard reads, the server exports."""
    if importlib.util.find_spec("server.metrics") is None:
        pytest.skip("server package not importable")
    from server.metrics import Metrics

    exported: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        elif family.type == "histogram":
            exported |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count")}
        else:
            exported.add(family.name)
    used = set().union(*(metric_names(t["expr"]) for _, t in dashboard_targets(dashboard)))
    missing = used - exported - {"up"}
    assert not missing, f"dashboard reads metrics the server does not define: {missing}"
