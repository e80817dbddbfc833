"""Paths, DESIGN.md metric names and small helpers for the deployment tests.

(A separate module, not conftest.py, so that `from deploy_helpers import ...` never picks up
another directory's conftest.)
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD_JSON = GRAFANA_DIR / "dashboards" / "trdq.json"
K8S_DIR = DEPLOY / "k8s"
K8S_TARGETS = ("base", "overlays/cpu", "overlays/gpu")

#: Metric families fixed by DESIGN.md section 3, with the sample suffixes prometheus_client
#: exposes (counters: _total; histograms: _bucket/_sum/_count).
DESIGN_HISTOGRAMS = {
    "trdq_request_duration_seconds",
    "trdq_queue_wait_seconds",
    "trdq_batch_size",
    "trdq_stage_duration_seconds",
    "trdq_denoise_step_seconds",
}
DESIGN_COUNTERS = {
    "trdq_quant_group_switches_total",
    "trdq_generated_images_total",
    "trdq_generated_video_frames_total",
    "trdq_calibration_cache_total",
    "trdq_errors_total",
}
DESIGN_GAUGES = {
    "trdq_queue_depth",
    "trdq_inflight_requests",
    "trdq_device_memory_bytes",
    "trdq_model_weight_bytes",
}
DESIGN_SAMPLES = (
    {f"{h}{s}" for h in DESIGN_HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    | DESIGN_COUNTERS
    | DESIGN_GAUGES
)
#: Non-trdq series the dashboard and alerts may use: Prometheus' own `up` and the
#: prometheus_client process collector.
EXTERNAL_SAMPLES = {"up", "process_resident_memory_bytes", "process_cpu_seconds_total"}
#: Series beyond DESIGN.md section 3 that server/metrics.py defines (async jobs API).
SERVER_EXTRA_SAMPLES = {
    "trdq_cancelled_generations_total", "trdq_jobs_stored", "trdq_worker_restarts_total",
}
#: Optional series the alert rules use only through `or` (see alerts.yml), never alone.
OPTIONAL_SAMPLES = {"trdq_ready"}

METRIC_NAME = re.compile(r"\b((?:trdq|process)_[a-z0-9_]+|up)\b(?=\s*[{\[)])")


def metric_names(expr: str) -> set[str]:
    """Series names referenced by a PromQL expression (trdq_*, process_*, up)."""
    return set(METRIC_NAME.findall(expr))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str | None:
    """A tool on PATH or installed in this interpreter's environment (pip-installed binaries)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else None


def dashboard_targets(dashboard: dict) -> list[tuple[str, dict]]:
    """(panel title, target) for every query target of every non-row panel."""
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]
