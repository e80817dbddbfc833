"""schemathesis against /openapi.json: no 5xx, every status and body as documented.

The fuzzed server publishes tiny limits (pixels, steps, frames) in its schema, so every
valid generated request is a cheap generation. The default run is short; the slow one
explores more examples per operation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.serving import live_server, make_settings

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance,negative_data_rejection"
)


def _fuzz_settings(tmp_path):
    return make_settings(
        tmp_path, video_model="tiny-shapes-t2v", max_pixels=32 * 32, max_steps=3, max_frames=2,
        max_prompt_chars=64, request_timeout_s=60, max_queue=4, max_jobs=32,
    )


def _schemathesis(base: str, max_examples: int, phases: str,
                  tmp_path: Path) -> subprocess.CompletedProcess:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency: pip install schemathesis"
    command = [
        st, "run", f"{base}/openapi.json", "--checks", CHECKS, "--max-examples",
        str(max_examples), "--seed", "1", "--workers", "1", "--request-timeout", "90",
        "--no-color", "--phases", phases, "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False,
                          env=dict(os.environ, NO_COLOR="1"))


def _run(tmp_path, max_examples: int, phases: str) -> None:
    with live_server(_fuzz_settings(tmp_path)) as (base, _app):
        result = _schemathesis(base, max_examples, phases, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]


@pytest.mark.integration
def test_schemathesis_short(tmp_path):
    _run(tmp_path, max_examples=4, phases="examples,fuzzing")


@pytest.mark.slow
@pytest.mark.integration
def test_schemathesis_long(tmp_path):
    # The coverage phase adds schema-boundary cases (hundreds of requests).
    _run(tmp_path, max_examples=100, phases="examples,coverage,fuzzing,stateful")
