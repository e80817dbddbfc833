"""Several devices (TRDQ_DEVICES): one worker per device, one shared queue.

CI has no GPU, so the workers here are two CPU "devices"; the scheduling is the same
code that runs one worker per GPU (measured on a 2-GPU machine in docs/RELIABILITY.md).
"""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import create_app
from server.settings import Settings
from tests.helpers.serving import FAST, make_settings, post_concurrently


def test_devices_setting_lists_one_worker_per_device():
    assert Settings(devices=" cuda:0, cuda:1 ").device_names == ["cuda:0", "cuda:1"]
    assert Settings(device="cpu").device_names == ["cpu"]  # unset: TRDQ_DEVICE
    for bad in ("gpu0", "cuda:0,tpu", "auto,cpu"):
        with pytest.raises(ValidationError, match="devices"):
            Settings(devices=bad)


def test_a_missing_gpu_is_refused_at_start_up(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    settings = make_settings(tmp_path, devices="cpu,cuda:1")
    with pytest.raises(RuntimeError, match="cuda:1"):
        create_app(settings)


def test_two_workers_run_batches_at_the_same_time(tmp_path):
    settings = make_settings(tmp_path, devices="cpu,cpu", worker_mode="thread", max_batch=1,
                             threads=1)
    app = create_app(settings)
    engine = app.state.engine
    # Both jobs must be inside generation at once to pass the barrier; one worker
    # running them in turn would time out here and fail both requests.
    barrier = threading.Barrier(2, timeout=60)
    threads_seen: list[str] = []

    def hold_until_both_run(specs) -> None:
        threads_seen.append(threading.current_thread().name)
        barrier.wait()

    with TestClient(app) as client:
        info = client.get("/info").json()
        assert info["devices"] == ["cpu", "cpu"]
        first, second = engine.workers
        assert first.models.get("image", "fp").pipe is not second.models.get("image", "fp").pipe
        engine.fault_hook = hold_until_both_run
        bodies = [{"prompt": "a red circle", "seed": seed, **FAST} for seed in (1, 2)]
        replies = post_concurrently(client, "/generate/image", bodies)
    assert [reply.status_code for reply in replies] == [200, 200], [r.text for r in replies]
    assert sorted(threads_seen) == ["trdq-worker-0_0", "trdq-worker-1_0"]
    assert all(reply.headers["X-TRDQ-Device"] == "cpu" for reply in replies)


def test_a_failure_on_one_worker_leaves_the_other_serving(tmp_path):
    settings = make_settings(tmp_path, devices="cpu,cpu", worker_mode="thread", max_batch=1,
                             threads=1)
    app = create_app(settings)
    engine = app.state.engine

    def fail_on_first_worker(specs) -> None:
        if threading.current_thread().name == "trdq-worker-0_0":
            time.sleep(0.5)  # busy: the second request goes to the other worker
            raise RuntimeError("injected fault")

    with TestClient(app) as client:
        engine.fault_hook = fail_on_first_worker
        bodies = [{"prompt": "a", "seed": seed, **FAST} for seed in (1, 2)]
        replies = post_concurrently(client, "/generate/image", bodies)
        assert client.get("/readyz").status_code == 200
    assert sorted(reply.status_code for reply in replies) == [200, 500]


@pytest.mark.gpu
def test_two_gpus_serve_the_quantized_model_at_once(tmp_path):
    """On a 2-GPU machine: each worker runs TR-DQ's kernels on its own GPU, and (the default
    TRDQ_CUDA_GRAPHS=auto) captures and replays its own CUDA graphs while the other works:
    the first round runs eagerly, the second captures, the third replays."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    settings = make_settings(tmp_path, devices="cuda:0,cuda:1", worker_mode="thread",
                             quant="w8a8", max_batch=1)
    app = create_app(settings)
    barrier = threading.Barrier(2, timeout=120)
    with TestClient(app) as client:
        app.state.engine.fault_hook = lambda specs: barrier.wait()
        bodies = [{"prompt": "a red circle", "seed": seed, **FAST} for seed in (1, 2)]
        for _ in range(3):
            replies = post_concurrently(client, "/generate/image", bodies)
            assert [reply.status_code for reply in replies] == [200, 200], [
                r.text for r in replies]
            assert sorted(reply.headers["X-TRDQ-Device"] for reply in replies) == [
                "cuda:0", "cuda:1"]
        info = client.get("/info").json()
        for worker in app.state.engine.workers:
            forward = worker.models.get("image", "w8a8").pipe.transformer.forward
            assert forward.graphs and not forward.eager, worker.device
    assert info["models"][0]["backend"] != "reference"
