"""The monitoring stack against real processes: the trdq server (`python -m server`) and a
real Prometheus scraping it every second on loopback.

Drives image, video and invalid requests, waits for the scrapes, then evaluates every
Grafana panel query (variables substituted as Grafana does) through Prometheus' HTTP API:
each must parse and return data. Also checks that the alert rules evaluate without errors
and that the dashboard variables find their values.

Runs in the default suite (marker `integration`, not `slow`), in about 30-60 s on 2 CPU
cores. Skips when the server package is not importable or Prometheus is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from deploy_helpers import DASHBOARD_JSON, PROMETHEUS_DIR, dashboard_targets, free_port

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.integration

SERVER_READY_TIMEOUT_S = float(os.environ.get("TRDQ_DEPLOY_TEST_READY_TIMEOUT_S", "150"))
SCRAPE_TIMEOUT_S = 20.0
#: The precision(s) the server under test serves. fp keeps start-up short: a w8a8 calibration
#: of one tiny model takes minutes on 2 CPU cores. To exercise the quantized path's panels,
#: set TRDQ_DEPLOY_TEST_QUANT=w8a8 and point TRDQ_DEPLOY_TEST_CACHE_DIR at a cache filled by
#: `trdq calibrate` (otherwise the server calibrates at start-up, past the ready timeout).
TEST_QUANT = os.environ.get("TRDQ_DEPLOY_TEST_QUANT", "fp")
TEST_CACHE_DIR = os.environ.get("TRDQ_DEPLOY_TEST_CACHE_DIR")

IMAGE_REQUEST = {"prompt": "a red circle", "num_inference_steps": 4}
VIDEO_REQUEST = {"prompt": "a blue square moving right", "num_inference_steps": 4, "num_frames": 4}
#: Rejected with 422 by the request schema: populates the error panels.
INVALID_REQUEST = {"prompt": "a red circle", "num_inference_steps": 0}

#: (panel title, refId) -> why the query may return no data in this test, and the condition
#: (on the served precisions) under which that reason holds. Anything else must have data.
NO_DATA_ALLOWED: dict[tuple[str, str], tuple[str, Callable[[set[str]], bool]]] = {
    ("Quantization group switches", "A"): (
        (
            "trdq_quant_group_switches_total{model} only exists once a quantized (non-fp) "
            "model's timestep hook has switched groups; a server serving only fp has none"
        ),
        lambda quants: quants <= {"fp"},
    ),
    ("Worker restarts by device", "A"): (
        (
            "trdq_worker_restarts_total{device} exists for worker processes "
            "(TRDQ_WORKER_MODE=process, from their start at 0); this server runs its one "
            "device's worker as a thread"
        ),
        lambda quants: True,
    ),
    ("Cancellations and stored async jobs", "A"): (
        (
            "trdq_cancelled_generations_total{reason} gets a series at the first cancellation "
            "(client gone, timeout, DELETE, shutdown); this test cancels nothing"
        ),
        lambda quants: True,
    ),
}


@dataclass
class Server:
    url: str
    instance: str
    log: Path


@dataclass
class Prometheus:
    url: str
    client: httpx.Client

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        reply = self.client.get(f"{self.url}/api/v1/query", params=params)
        body = reply.json()
        assert reply.status_code == 200 and body["status"] == "success", (
            f"query failed: {expr}\n{body.get('errorType')}: {body.get('error')}"
        )
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def wait_for(self, expr: str, minimum: float, what: str) -> None:
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S
        while self.value(expr) < minimum:
            assert time.monotonic() < deadline, f"Prometheus never saw {what}: {expr} < {minimum}"
            time.sleep(0.25)


def _log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    if importlib.util.find_spec("server.app") is None:
        pytest.skip("server package not importable yet")
    workdir = tmp_path_factory.mktemp("trdq-server")
    port = free_port()
    env = {
        **os.environ,
        "TRDQ_HOST": "127.0.0.1",
        "TRDQ_PORT": str(port),
        "TRDQ_QUANT": TEST_QUANT,
        "TRDQ_CACHE_DIR": TEST_CACHE_DIR or str(workdir / "cache"),
        "TRDQ_LOG_LEVEL": "warning",
    }
    env.pop("TRDQ_API_KEY", None)
    log = workdir / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while True:
            assert process.poll() is None, f"server exited early:\n{_log_tail(log)}"
            assert time.monotonic() < deadline, f"server not ready in time:\n{_log_tail(log)}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield Server(url=url, instance=f"127.0.0.1:{port}", log=log)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def prometheus(prometheus_bin, server, tmp_path_factory) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "trdq",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [server.instance]}],
            }
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={config_file}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--log.level=warn",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited:\n{_log_tail(log)}"
            assert time.monotonic() < deadline, f"prometheus not ready:\n{_log_tail(log)}"
            try:
                if client.get(f"{url}/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield Prometheus(url=url, client=client)
    finally:
        client.close()
        _stop(process)


@pytest.fixture(scope="module")
def traffic(server, prometheus) -> dict:
    """Two rounds of image + video + invalid requests, each round scraped before the next,
    so that every series created by round 1 has an increase by round 2 (rate() > 0)."""
    prometheus.wait_for('up{job="trdq"}', 1, "a successful scrape of the server")
    started = time.time()
    count = 'sum(trdq_request_duration_seconds_count{{job="trdq", endpoint="{}", status="{}"}})'
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for round_number in (1, 2):
            image = client.post("/generate/image", json=IMAGE_REQUEST)
            assert image.status_code == 200, image.text
            video = client.post("/generate/video", json=VIDEO_REQUEST)
            assert video.status_code == 200, video.text
            invalid = client.post("/generate/image", json=INVALID_REQUEST)
            assert invalid.status_code == 422, invalid.text
            for endpoint, status in (
                ("/generate/image", "200"),
                ("/generate/video", "200"),
                ("/generate/image", "422"),
            ):
                prometheus.wait_for(
                    count.format(endpoint, status), round_number, f"round {round_number}"
                )
        info = client.get("/info").json()
    time.sleep(2)  # two more scrapes and rule evaluations after the last request
    quants = {
        series["metric"]["quant"]
        for series in prometheus.query('trdq_model_weight_bytes{job="trdq"}')
    }
    return {"started": started, "info": info, "quants": quants}


def _regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana interpolates it into a PromQL regex matcher."""
    escaped = [re.sub(r"([\\^$*+?.()|\[\]{}-])", r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _interpolate(expr: str, variables: dict[str, str], rate_interval: str) -> str:
    expr = expr.replace("$__rate_interval", rate_interval)
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_dashboard_variables_find_values(prometheus, server, traffic):
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    for name, expected in (
        ("instance", {server.instance}),
        ("model", {"tiny-shapes-t2i", "tiny-shapes-t2v"}),
    ):
        query = variables[name]["query"]["query"]
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
        assert match, query
        selector = match.group(1).replace("$instance", _regex_value([server.instance]))
        reply = prometheus.client.get(
            f"{prometheus.url}/api/v1/label/{match.group(2)}/values",
            params={"match[]": selector},
        ).json()
        assert reply["status"] == "success", reply
        assert expected <= set(reply["data"]), f"${name}: {reply['data']}"


@pytest.mark.parametrize("selection", ["all", "selected"])
def test_every_panel_query_returns_data(prometheus, server, traffic, selection):
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    models = ["tiny-shapes-t2i", "tiny-shapes-t2v"]
    variables = (
        {"instance": ".*", "model": ".*"}
        if selection == "all"  # Grafana's "All" with allValue ".*"
        else {"instance": _regex_value([server.instance]), "model": _regex_value(models)}
    )
    # $__rate_interval: long enough to cover all the traffic, at least 15 s.
    window = max(15, math.ceil(time.time() - traffic["started"]) + 5)
    now = time.time()
    empty, not_finite = [], []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        for target in panel["targets"]:
            expr = _interpolate(target["expr"], variables, f"{window}s")
            result = prometheus.query(expr, at=now)  # asserts that it parses
            key = (panel["title"], target["refId"])
            if not result:
                allowed = NO_DATA_ALLOWED.get(key)
                if allowed is None or not allowed[1](traffic["quants"]):
                    empty.append(f"{key}: {expr}")
                continue
            values = [float(series["value"][1]) for series in result]
            if not any(math.isfinite(value) for value in values):
                not_finite.append(f"{key}: {expr} -> {values}")
    assert not empty, "panels with no data:\n" + "\n".join(empty)
    assert not not_finite, "panels with only NaN/Inf:\n" + "\n".join(not_finite)
    titles = [title for title, _ in dashboard_targets(dashboard)]
    assert len(titles) >= 25  # guard against the loop silently checking nothing


def test_alert_rules_evaluate_on_live_data(prometheus, traffic):
    reply = prometheus.client.get(f"{prometheus.url}/api/v1/rules").json()
    assert reply["status"] == "success"
    rules = [rule for group in reply["data"]["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    # A healthy server under light load trips no alert.
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert not firing, firing


def test_target_is_healthy(prometheus, server, traffic):
    targets = prometheus.client.get(f"{prometheus.url}/api/v1/targets").json()["data"]
    active = {t["labels"]["instance"]: t for t in targets["activeTargets"]}
    assert active[server.instance]["health"] == "up", active[server.instance].get("lastError")
