"""SIGTERM on the real server process: admissions stop (/readyz 503), accepted work
finishes, the process exits 0 within the grace period. And the API key never appears
in the process's logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.helpers.serving import FAST, free_port, wait_until

KEY = "sk-never-in-logs-5f2c9a"


@pytest.mark.integration
@pytest.mark.slow  # ~90 s; draining in-process: tests/serving/test_faults.py
def test_sigterm_drains_in_flight_work_then_exits(tmp_path):
    port = free_port()
    env = dict(os.environ, TRDQ_PORT=str(port), TRDQ_QUANT="fp", TRDQ_VIDEO_MODEL="none",
               TRDQ_WARMUP="false", TRDQ_CACHE_DIR=str(tmp_path), TRDQ_LOG_LEVEL="debug",
               TRDQ_API_KEY=KEY, TRDQ_SHUTDOWN_GRACE_S="120")
    process = subprocess.Popen([sys.executable, "-m", "server"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {KEY}"}
    try:
        def ready() -> bool:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s=180, interval_s=0.3)
        assert httpx.post(f"{base}/generate/image", json={"prompt": "warm", **FAST},
                          headers=auth, timeout=120).status_code == 200
        assert httpx.post(f"{base}/generate/image", json={"prompt": "x"},
                          headers={"authorization": "Bearer wrong-key"}).status_code == 401

        in_flight = []
        request = threading.Thread(target=lambda: in_flight.append(httpx.post(
            f"{base}/generate/image", headers=auth, timeout=180,
            # long enough (seconds, even on an idle machine) to still be running when
            # the test looks at /readyz after SIGTERM
            json={"prompt": "a red circle", **FAST, "width": 128, "height": 128,
                  "num_inference_steps": 100})))
        request.start()
        job = httpx.post(f"{base}/jobs/image", headers=auth,
                         json={"prompt": "queued job", **FAST, "width": 128, "height": 128,
                               "num_inference_steps": 40})
        assert job.status_code == 202
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)

        def draining() -> bool:
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 503

        wait_until(draining, timeout_s=10, interval_s=0.1)
        refused = httpx.post(f"{base}/generate/image", json={"prompt": "late", **FAST},
                             headers=auth, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
        status = httpx.get(f"{base}/jobs/{job.json()['id']}", headers=auth).json()
        assert status["state"] in ("queued", "running", "succeeded")  # not dropped

        request.join(timeout=180)
        assert in_flight and in_flight[0].status_code == 200  # accepted work finished
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = process.stdout.read().decode()
    assert "draining" in logs and "drained" in logs
    assert KEY not in logs
