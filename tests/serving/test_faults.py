"""Faults fail one request, never the server: 500 on a crash, 503 on device OOM,
504 on timeout (the worker is freed), 503 while draining."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from tests.helpers.serving import FAST, make_settings, metric_value, wait_until


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("faults"), max_batch=1)
    with TestClient(create_app(settings)) as test_client:
        _ok(test_client)  # the first call pays lazy set-up; later ones are fast
        yield test_client


@pytest.fixture
def engine(client):
    engine = client.app.state.engine
    yield engine
    engine.fault_hook = None


def _ok(client) -> None:
    reply = client.post("/generate/image", json={"prompt": "a red circle", **FAST})
    assert reply.status_code == 200, reply.text
    assert client.get("/readyz").status_code == 200


def _raise(error: Exception):
    def hook(specs):
        raise error
    return hook


def test_an_exception_in_generation_is_a_json_500_and_the_server_stays_ready(client, engine):
    engine.fault_hook = _raise(RuntimeError("boom: secret internals"))
    reply = client.post("/generate/image", json={"prompt": "a red circle", **FAST})
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["type"] == "generation_failed"
    assert "secret internals" not in error["message"]  # no internals leak to clients
    engine.fault_hook = None
    _ok(client)


def test_device_out_of_memory_is_a_503_and_the_server_keeps_serving(client, engine):
    engine.fault_hook = _raise(torch.cuda.OutOfMemoryError("CUDA out of memory (injected)"))
    reply = client.post("/generate/image", json={"prompt": "a red circle", **FAST})
    assert reply.status_code == 503
    assert reply.json()["error"]["type"] == "device_out_of_memory"
    assert reply.headers["retry-after"].isdigit()
    engine.fault_hook = None
    _ok(client)
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "trdq_errors_total", type="device_out_of_memory") >= 1


def test_out_of_memory_on_a_batch_retries_the_jobs_one_by_one(client, engine):
    calls = []

    def oom_on_batches(specs):
        calls.append(len(specs))
        if len(calls) == 1:
            time.sleep(1.5)  # keep the worker busy so the next two requests queue together
        if len(specs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    engine.fault_hook = oom_on_batches
    engine.settings.max_batch = 2
    replies = []

    def send() -> None:
        replies.append(client.post("/generate/image", json={"prompt": "a red circle", **FAST}))

    try:
        threads = [threading.Thread(target=send) for _ in range(3)]
        threads[0].start()
        wait_until(lambda: calls)
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        engine.settings.max_batch = 1
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert calls == [1, 2, 1, 1]


def test_timeout_is_504_and_frees_the_worker(client, engine):
    # 100 steps at 128x128 take seconds even on an idle machine; the limit is far below
    engine.settings.request_timeout_s = 0.5
    try:
        reply = client.post("/generate/image", json={"prompt": "a red circle", **FAST,
                                                     "width": 128, "height": 128,
                                                     "num_inference_steps": 100})
    finally:
        engine.settings.request_timeout_s = 300.0
    assert reply.status_code == 504
    assert reply.json()["error"]["type"] == "timeout"
    wait_until(lambda: engine.idle, timeout_s=10)  # stopped at the next step, not after 100
    started = time.perf_counter()
    _ok(client)
    assert reply.elapsed.total_seconds() < 10
    assert time.perf_counter() - started < 30
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "trdq_cancelled_generations_total", reason="timeout") >= 1


def test_draining_refuses_new_work_and_readyz_turns_503(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as client:
        client.app.state.engine.begin_drain()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["type"] == "shutting_down"
        reply = client.post("/generate/image", json={"prompt": "x", **FAST})
        assert reply.status_code == 503 and reply.json()["error"]["type"] == "shutting_down"
        assert reply.headers["retry-after"] == "1"
        assert client.post("/jobs/image", json={"prompt": "x", **FAST}).status_code == 503
        assert client.get("/healthz").status_code == 200  # alive, just not taking work
