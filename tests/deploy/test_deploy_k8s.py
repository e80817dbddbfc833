"""Kubernetes manifests: `kubectl kustomize` builds base and overlays; schema validation when
kubernetes-validate is installed; the contract between the pieces (probes, cache, GPU)."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
import yaml
from deploy_helpers import K8S_DIR, K8S_TARGETS, tool


def _build(kubectl: str, target: str) -> str:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / target)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def built(kubectl) -> dict[str, list[dict]]:
    return {target: list(yaml.safe_load_all(_build(kubectl, target))) for target in K8S_TARGETS}


def _one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_kustomize_builds(built, target):
    kinds = {doc["kind"] for doc in built[target]}
    assert kinds == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_schema_validation(built, target, tmp_path):
    """kubernetes-validate --strict on the built manifests (CRDs have no schema: skipped)."""
    if (
        importlib.util.find_spec("kubernetes_validate") is None
        and tool("kubernetes-validate") is None
    ):
        pytest.skip("kubernetes-validate not installed (pip install kubernetes-validate)")
    validator = tool("kubernetes-validate")
    native = [doc for doc in built[target] if "coreos.com" not in doc["apiVersion"]]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(native))
    result = subprocess.run(
        [validator, "--strict", "--quiet", str(manifest)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_workloads_contract(built, target):
    docs = built[target]
    deployment, job = _one(docs, "Deployment"), _one(docs, "Job")
    settings = _one(docs, "ConfigMap")
    pvc = _one(docs, "PersistentVolumeClaim")
    assert settings["data"]["TRDQ_CACHE_DIR"] == "/var/cache/trdq"
    assert settings["data"]["TRDQ_HOST"] == "0.0.0.0"
    for workload in (deployment, job):
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        # Same settings and the same cache volume: the Job's artifact is the replicas' cache hit.
        assert container["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert any(
            mounts.get(name) == "/var/cache/trdq" and claim == pvc["metadata"]["name"]
            for name, claim in claims.items()
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["enableServiceLinks"] is False  # keeps TRDQ_SERVER_* out of the settings
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
    assert "trdq calibrate" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])

    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    # Sized for a calibration on a cache miss: at least 10 minutes before liveness kicks in.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_service_monitor_and_hpa(built, target):
    docs = built[target]
    service, monitor = _one(docs, "Service"), _one(docs, "ServiceMonitor")
    deployment, hpa = _one(docs, "Deployment"), _one(docs, "HorizontalPodAutoscaler")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["port"] in port_names
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "trdq_queue_depth"


def test_gpu_only_in_gpu_overlay(built):
    def gpu_limits(docs):
        return [
            doc["kind"]
            for doc in docs
            if doc["kind"] in ("Deployment", "Job")
            and "nvidia.com/gpu"
            in doc["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
        ]

    assert sorted(gpu_limits(built["overlays/gpu"])) == ["Deployment", "Job"]
    assert gpu_limits(built["overlays/cpu"]) == []
    assert gpu_limits(built["base"]) == []
    gpu_settings = _one(built["overlays/gpu"], "ConfigMap")["data"]
    cpu_settings = _one(built["overlays/cpu"], "ConfigMap")["data"]
    assert gpu_settings["TRDQ_DEVICE"] == "cuda" and cpu_settings["TRDQ_DEVICE"] == "cpu"
    images = {
        target: _one(built[target], "Deployment")["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        for target in ("overlays/cpu", "overlays/gpu")
    }
    assert images["overlays/cpu"].endswith(":cpu") and images["overlays/gpu"].endswith(":cuda")


def test_settings_names_are_server_settings(built):
    """Every TRDQ_ key in the ConfigMap is a field of server.settings.Settings."""
    if importlib.util.find_spec("server.settings") is None:
        pytest.skip("server package not importable")
    from server.settings import Settings

    fields = {f"TRDQ_{name.upper()}" for name in Settings.model_fields}
    for target in K8S_TARGETS:
        keys = set(_one(built[target], "ConfigMap")["data"])
        assert keys <= fields, f"{target}: unknown settings {keys - fields}"
        settings = Settings(
            **{
                k.removeprefix("TRDQ_").lower(): v
                for k, v in _one(built[target], "ConfigMap")["data"].items()
            }
        )
        assert settings.cache_dir.as_posix() == "/var/cache/trdq"


def test_calibration_job_script_calibrates_what_the_server_loads(built, tmp_path):
    """Run the Job's shell script with a stub `trdq` that records its arguments."""
    shell = tool("sh")
    if shell is None:
        pytest.skip("no sh")
    container = _one(built["overlays/cpu"], "Job")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "bin" / "trdq"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    settings = _one(built["overlays/cpu"], "ConfigMap")["data"]
    env = {
        **settings,
        "TRDQ_QUANT": "w8a8,fp,w4a8",
        "TRDQ_VIDEO_MODEL": "none",
        "PATH": f"{stub.parent}:/usr/bin:/bin",
    }
    result = subprocess.run(
        [shell, "-c", container["args"][0]],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    common = "--cache-dir /var/cache/trdq --device cpu --backend auto"
    assert calls.read_text().splitlines() == [
        f"calibrate --model tiny-shapes-t2i --quant w8a8 {common}",
        f"calibrate --model tiny-shapes-t2i --quant w4a8 {common}",
    ]
