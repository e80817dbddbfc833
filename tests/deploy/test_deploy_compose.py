"""docker-compose.yml: validated by the Compose client itself, plus the stack's contract."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from deploy_helpers import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"


def _config(compose_command: list[str], *profile: str) -> dict:
    args = [*compose_command, "-f", str(COMPOSE_FILE)]
    for name in profile:
        args += ["--profile", name]
    result = subprocess.run(
        [*args, "config", "--format", "yaml"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def default_stack(compose_command) -> dict:
    return _config(compose_command)


@pytest.fixture(scope="module")
def gpu_stack(compose_command) -> dict:
    return _config(compose_command, "gpu")


def test_compose_config_validates(default_stack, gpu_stack):
    assert set(default_stack["services"]) == {"trdq", "prometheus", "grafana"}
    assert set(gpu_stack["services"]) == {"trdq", "trdq-gpu", "prometheus", "grafana"}


def test_servers_share_cache_volume_and_scrape_alias(gpu_stack):
    for name in ("trdq", "trdq-gpu"):
        service = gpu_stack["services"][name]
        mounts = {(m["source"], m["target"]) for m in service["volumes"]}
        assert ("trdq-cache", "/var/cache/trdq") in mounts
        assert service["environment"]["TRDQ_CACHE_DIR"] == "/var/cache/trdq"
        assert service["environment"]["TRDQ_HOST"] == "0.0.0.0"
        # deploy/prometheus/prometheus.yml discovers servers by this DNS alias.
        assert "trdq-server" in service["networks"]["default"]["aliases"]
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
    cpu, gpu = gpu_stack["services"]["trdq"], gpu_stack["services"]["trdq-gpu"]
    assert cpu["environment"]["TRDQ_DEVICE"] == "cpu"
    assert gpu["environment"]["TRDQ_DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in cpu or "devices" not in str(cpu["deploy"])
    assert gpu["build"]["args"]["TORCH_FLAVOR"].startswith("cu")
    assert cpu["build"]["args"]["TORCH_FLAVOR"] == "cpu"


def test_monitoring_services(default_stack):
    services = default_stack["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert prometheus["healthcheck"]["test"] and grafana["healthcheck"]["test"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    targets = {m["target"]: m for m in prometheus["volumes"] + grafana["volumes"]}
    assert targets["/etc/prometheus"]["source"] == str(REPO / "deploy" / "prometheus")
    assert targets["/etc/grafana/provisioning"]["source"] == str(
        REPO / "deploy" / "grafana" / "provisioning"
    )
    assert targets["/var/lib/grafana/dashboards"]["source"] == str(
        REPO / "deploy" / "grafana" / "dashboards"
    )
    assert {"trdq-cache", "prometheus-data", "grafana-data"} <= set(default_stack["volumes"])


def test_grafana_provisioning_points_at_the_dashboard():
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/trdq.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["uid"] == "prometheus"
