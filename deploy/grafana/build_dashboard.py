"""Build deploy/grafana/dashboards/trdq.json, the trdq-server Grafana dashboard.

The JSON is generated so that every panel is declared in one readable place; the committed
file is the output (Grafana provisions it as is) and tests/deploy checks the two agree.

    python deploy/grafana/build_dashboard.py          # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check  # exit 1 if the JSON is stale

Metric names come from DESIGN.md section 3. Every panel's PromQL is evaluated against a
real Prometheus scraping a real server in tests/deploy/test_deploy_integration.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "trdq.json"
DASHBOARD_UID = "trdq-server"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Label selectors shared by the queries; Grafana substitutes the variables.
INST = 'instance=~"$instance"'
INST_MODEL = 'instance=~"$instance", model=~"$model"'
RATE = "$__rate_interval"
GENERATE = 'endpoint=~"/generate/.*"'


@dataclass
class Target:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | bargauge
    width: int = 12
    height: int = 8
    description: str = ""
    options: dict = field(default_factory=dict)


def quantiles(metric: str, selector: str, by: str, legend: str, qs=(0.5, 0.95, 0.99)):
    """histogram_quantile targets for p50/p95/p99 of one histogram."""
    targets = []
    for q in qs:
        expr = (
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))"
        )
        targets.append(Target(expr, f"p{round(q * 100)} {legend}"))
    return targets


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Overview",
        [
            Panel(
                "Servers up",
                [Target(f'sum(up{{{INST}, job=~"trdq.*"}})', "up")],
                kind="stat",
                width=4,
                height=4,
                description="Scrape targets of the trdq job that answer /metrics.",
            ),
            Panel(
                "Request rate",
                [
                    Target(
                        f"sum(rate(trdq_request_duration_seconds_count{{{INST}, {GENERATE}}}[{RATE}]))",
                        "req/s",
                    )
                ],
                unit="reqps",
                kind="stat",
                width=4,
                height=4,
                description="Generation requests per second, all statuses.",
            ),
            Panel(
                "5xx ratio",
                [
                    Target(
                        f'(sum(rate(trdq_request_duration_seconds_count{{{INST}, status=~"5.."}}[{RATE}])) or vector(0))'
                        f" / sum(rate(trdq_request_duration_seconds_count{{{INST}}}[{RATE}]))",
                        "5xx",
                    )
                ],
                unit="percentunit",
                kind="stat",
                width=4,
                height=4,
                description="Share of requests answered with a server error (TrdqHighErrorRate fires above 5%).",
            ),
            Panel(
                "p95 image latency",
                [
                    Target(
                        "histogram_quantile(0.95, sum by (le) (rate(trdq_request_duration_seconds_bucket"
                        f'{{{INST}, endpoint="/generate/image"}}[{RATE}])))',
                        "p95",
                    )
                ],
                unit="s",
                kind="stat",
                width=4,
                height=4,
                description="End-to-end latency of POST /generate/image (TrdqImageLatencyHigh fires above 30 s).",
            ),
            Panel(
                "In flight",
                [Target(f"sum(trdq_inflight_requests{{{INST}}})", "in flight")],
                kind="stat",
                width=4,
                height=4,
                description="Requests being generated right now.",
            ),
            Panel(
                "Queue depth",
                [Target(f"sum(trdq_queue_depth{{{INST}}})", "queued")],
                kind="stat",
                width=4,
                height=4,
                description="Requests waiting for the engine; at TRDQ_MAX_QUEUE new ones get 429.",
            ),
        ],
    ),
    (
        "Traffic",
        [
            Panel(
                "Request rate by endpoint and status",
                [
                    Target(
                        f"sum by (endpoint, status) (rate(trdq_request_duration_seconds_count{{{INST}}}[{RATE}]))",
                        "{{endpoint}} {{status}}",
                    )
                ],
                unit="reqps",
                description="Every HTTP route the server measures, split by status code.",
            ),
            Panel(
                "Error rate by endpoint and status",
                [
                    Target(
                        f'sum by (endpoint, status) (rate(trdq_request_duration_seconds_count{{{INST}, status=~"[45].."}}[{RATE}]))',
                        "{{endpoint}} {{status}}",
                    ),
                    Target(
                        f"sum by (type) (rate(trdq_errors_total{{{INST}}}[{RATE}]))",
                        "error type {{type}}",
                    ),
                ],
                unit="reqps",
                description=(
                    "4xx (422 bad input, 429 queue full, ...) and 5xx replies by route and status, "
                    "and trdq_errors_total by error type."
                ),
            ),
            Panel(
                "Worker restarts by device",
                [
                    Target(
                        f"sum by (device) (increase(trdq_worker_restarts_total{{{INST}}}[{RATE}]))",
                        "{{device}}",
                    )
                ],
                description=(
                    "Worker processes started again after one exited (TRDQ_WORKER_MODE=process): "
                    "each restart failed the jobs that worker held with 500 worker_crashed."
                ),
            ),
        ],
    ),
    (
        "Latency",
        [
            Panel(
                "Request latency p50 / p95 / p99",
                quantiles(
                    "trdq_request_duration_seconds",
                    f"{INST}, {GENERATE}",
                    "endpoint",
                    "{{endpoint}}",
                ),
                unit="s",
                description="End-to-end time of generation requests, queue wait included.",
            ),
            Panel(
                "Pipeline stage time p95",
                [
                    Target(
                        "histogram_quantile(0.95, sum by (le, model, quant, stage) "
                        f"(rate(trdq_stage_duration_seconds_bucket{{{INST_MODEL}}}[{RATE}])))",
                        "{{model}} {{quant}} {{stage}}",
                    )
                ],
                unit="s",
                description="text_encode, denoise (all steps), vae_decode and media encode, per model and precision.",
            ),
        ],
    ),
    (
        "Queue and batching",
        [
            Panel(
                "Queue depth and in-flight requests",
                [
                    Target(
                        f"sum by (instance) (trdq_queue_depth{{{INST}}})", "queued {{instance}}"
                    ),
                    Target(
                        f"sum by (instance) (trdq_inflight_requests{{{INST}}})",
                        "in flight {{instance}}",
                    ),
                ],
                width=8,
            ),
            Panel(
                "Queue wait p50 / p95 / p99",
                quantiles("trdq_queue_wait_seconds", INST, "instance", "{{instance}}"),
                unit="s",
                width=8,
                description="Time from admission to the start of generation.",
            ),
            Panel(
                "Batch size",
                [
                    Target(
                        f"sum by (instance) (rate(trdq_batch_size_sum{{{INST}}}[{RATE}]))"
                        f" / sum by (instance) (rate(trdq_batch_size_count{{{INST}}}[{RATE}]))",
                        "mean {{instance}}",
                    ),
                    Target(
                        "histogram_quantile(0.95, sum by (le, instance) "
                        f"(rate(trdq_batch_size_bucket{{{INST}}}[{RATE}])))",
                        "p95 {{instance}}",
                    ),
                ],
                width=8,
                description="Requests merged into one pipeline call (bounded by TRDQ_MAX_BATCH).",
            ),
        ],
    ),
    (
        "Denoiser (TR-DQ)",
        [
            Panel(
                "Denoise step time by timestep group",
                [
                    Target(
                        f"sum by (model, quant, group) (rate(trdq_denoise_step_seconds_sum{{{INST_MODEL}}}[{RATE}]))"
                        f" / sum by (model, quant, group) (rate(trdq_denoise_step_seconds_count{{{INST_MODEL}}}[{RATE}]))",
                        "mean {{model}} {{quant}} group {{group}}",
                    ),
                    Target(
                        "histogram_quantile(0.95, sum by (le, model, quant, group) "
                        f"(rate(trdq_denoise_step_seconds_bucket{{{INST_MODEL}}}[{RATE}])))",
                        "p95 {{model}} {{quant}} group {{group}}",
                    ),
                ],
                unit="s",
                description=(
                    "One transformer forward per sampler step; each timestep group has its own "
                    "quantization parameters, so a slow group points at its kernels or scales."
                ),
            ),
            Panel(
                "Quantization group switches",
                [
                    Target(
                        f"sum by (model) (rate(trdq_quant_group_switches_total{{{INST_MODEL}}}[{RATE}]))",
                        "{{model}}",
                    )
                ],
                unit="ops",
                description="How often the timestep hook swaps the active group's scales (per second).",
            ),
        ],
    ),
    (
        "Throughput",
        [
            Panel(
                "Images and video frames per second",
                [
                    Target(f"sum(rate(trdq_generated_images_total{{{INST}}}[{RATE}]))", "images/s"),
                    Target(
                        f"sum(rate(trdq_generated_video_frames_total{{{INST}}}[{RATE}]))",
                        "video frames/s",
                    ),
                ],
                description="Generated output rate (images, and frames of all videos).",
            ),
            Panel(
                "Cancellations and stored async jobs",
                [
                    Target(
                        "sum by (reason) "
                        f"(rate(trdq_cancelled_generations_total{{{INST}}}[{RATE}]))",
                        "cancelled: {{reason}}",
                    ),
                    Target(f"sum(trdq_jobs_stored{{{INST}}})", "async jobs stored"),
                ],
                unit="short",
                description=(
                    "Generations stopped before finishing (client gone, timeout, DELETE, "
                    "shutdown) per second, and async jobs held by the server."
                ),
            ),
        ],
    ),
    (
        "Memory",
        [
            Panel(
                "Device memory",
                [
                    Target(
                        f"max by (device, kind) (trdq_device_memory_bytes{{{INST}}})",
                        "{{device}} {{kind}}",
                    )
                ],
                unit="bytes",
                description="allocated / reserved / peak as reported by the device (TrdqDeviceMemoryNearLimit).",
            ),
            Panel(
                "Process memory and CPU",
                [
                    Target(
                        f'process_resident_memory_bytes{{{INST}, job=~"trdq.*"}}',
                        "RSS {{instance}}",
                    ),
                    Target(
                        f'rate(process_cpu_seconds_total{{{INST}, job=~"trdq.*"}}[{RATE}])',
                        "CPU cores {{instance}}",
                    ),
                ],
                unit="bytes",
                description="Resident set size of the server process (right axis: CPU cores used).",
                options={"cpu_axis": True},
            ),
            Panel(
                "Weight bytes by component and dtype",
                [
                    Target(
                        f"max by (model, quant, component, dtype) (trdq_model_weight_bytes{{{INST_MODEL}}})",
                        "{{model}} {{quant}} {{component}} {{dtype}}",
                    )
                ],
                unit="bytes",
                kind="bargauge",
                description="Bytes of weights held per pipeline component and storage dtype.",
            ),
            Panel(
                "Weight bytes by dtype",
                [
                    Target(
                        f"sum by (model, quant, dtype) (max by (model, quant, component, dtype) (trdq_model_weight_bytes{{{INST_MODEL}}}))",
                        "{{model}} {{quant}} {{dtype}}",
                    )
                ],
                unit="bytes",
                kind="bargauge",
                description="The memory saving at a glance: packed low-bit weights next to what stays in 16/32-bit.",
            ),
        ],
    ),
    (
        "Calibration",
        [
            Panel(
                "Calibration cache results",
                [
                    Target(
                        f"sum by (result) (max by (instance, result) (trdq_calibration_cache_total{{{INST}}}))",
                        "{{result}}",
                    )
                ],
                kind="bargauge",
                width=24,
                height=6,
                description=(
                    "hit: a cached calibration was reused; miss: none existed, calibrated and saved; "
                    "invalid: a corrupt or mismatched artifact was rebuilt (TrdqCalibrationCacheInvalid)."
                ),
            ),
        ],
    ),
]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": target.expr,
            "legendFormat": target.legend or "__auto",
            "range": True,
            "refId": chr(ord("A") + i),
        }
        for i, target in enumerate(panel.targets)
    ]
    body: dict = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
    }
    if panel.kind == "timeseries":
        body["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1, "fillOpacity": 10}
        body["options"] = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        body["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}
        }
    elif panel.kind == "bargauge":
        body["options"] = {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
        }
    if panel.options.get("cpu_axis"):
        body["fieldConfig"]["overrides"].append(
            {
                "matcher": {"id": "byRegexp", "options": "CPU.*"},
                "properties": [
                    {"id": "unit", "value": "short"},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            }
        )
    return body


def _variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,  # on time range change: new instances and models appear
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def build() -> dict:
    panels: list[dict] = []
    panel_id = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": DASHBOARD_UID,
        "title": "trdq-server",
        "description": "Serving TR-DQ quantized diffusion transformers: traffic, latency, queue, denoiser, memory, calibration.",
        "tags": ["trdq", "diffusion", "serving"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                },
                _variable(
                    "instance", "Instance", "label_values(trdq_model_weight_bytes, instance)"
                ),
                _variable(
                    "model",
                    "Model",
                    'label_values(trdq_model_weight_bytes{instance=~"$instance"}, model)',
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
