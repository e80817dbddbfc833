"""Boot the real server with uvicorn in a subprocess and talk to it over HTTP."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_real_server_over_http(tmp_path):
    port = _free_port()
    env = dict(os.environ, TRDQ_PORT=str(port), TRDQ_HOST="127.0.0.1", TRDQ_QUANT="fp",
               TRDQ_CACHE_DIR=str(tmp_path), TRDQ_LOG_LEVEL="warning")
    process = subprocess.Popen([sys.executable, "-m", "server"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)
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
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_bad_setting_is_refused_with_its_name():
    env = dict(os.environ, TRDQ_PORT="not-a-port")
    result = subprocess.run([sys.executable, "-m", "server"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "TRDQ_PORT" in result.stderr
