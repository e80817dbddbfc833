"""Boot the real server with uvicorn in a subprocess and talk to it over HTTP."""

import os
import subprocess
import sys

import httpx
import pytest

from tests.helpers.serving import free_port
from trdq.tools.loadsuite import local_server


@pytest.mark.integration
def test_real_server_over_http(tmp_path):
    env = {"TRDQ_QUANT": "fp", "TRDQ_CACHE_DIR": str(tmp_path), "TRDQ_LOG_LEVEL": "warning"}
    with local_server(env, free_port(), tmp_path / "server.log", ready_timeout_s=120) as (base, _):
        reply = httpx.post(f"{base}/generate/image", timeout=60,
                           json={"prompt": "a red circle", "num_inference_steps": 2},
                           headers={"accept": "image/png"})
        assert reply.status_code == 200
        assert reply.content[:8] == b"\x89PNG\r\n\x1a\n"
        video = httpx.post(f"{base}/generate/video", timeout=60,
                           json={"prompt": "a blue square", "num_inference_steps": 2,
                                 "num_frames": 2})
        assert video.status_code == 200 and video.json()["videos"][0]["num_frames"] == 2
        assert "trdq_request_duration_seconds" in httpx.get(f"{base}/metrics").text


def test_bad_setting_is_refused_with_its_name():
    env = dict(os.environ, TRDQ_PORT="not-a-port")
    result = subprocess.run([sys.executable, "-m", "server"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "TRDQ_PORT" in result.stderr
