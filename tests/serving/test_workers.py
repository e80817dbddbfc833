"""Worker processes (TRDQ_WORKER_MODE=process): one spawned process per device.

Two CPU "devices" stand in for two GPUs (the same code spawns one process per GPU). The
fault hooks here run inside the worker processes, so they are module-level functions
(pickled by reference) bound with functools.partial.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.engine.remote_metrics import MetricsRecorder, replay
from server.metrics import Metrics
from server.settings import Settings
from tests.helpers.serving import (
    FAST,
    make_settings,
    metric_value,
    post_concurrently,
    wait_until,
)

pytestmark = pytest.mark.timeout(300) if hasattr(pytest.mark, "timeout") else []


def note_pid_and_sleep(directory: str, seconds: float, specs) -> None:
    """Worker-side hook: leave this process's pid in ``directory``, then hold the batch."""
    Path(directory, str(os.getpid())).touch()
    time.sleep(seconds)


def meet_the_other_worker(directory: str, specs) -> None:
    """Worker-side barrier: leave this pid, then wait until a second process left its own;
    one worker running both batches in turn would never see two and fail here."""
    Path(directory, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(directory).iterdir())) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the other worker never ran at the same time")
        time.sleep(0.02)


def raise_error(kind: str, specs) -> None:
    import torch

    if kind == "oom":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
    raise RuntimeError("boom: secret internals")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is gone for our purposes
    status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return status != "Z"


def _worker_pids(client) -> list[int]:
    return [worker["pid"] for worker in client.get("/info").json()["workers"]]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("workers"), devices="cpu,cpu",
                             max_batch=1, threads=1)
    assert settings.resolved_worker_mode == "process"  # auto: several devices
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def engine(client):
    engine = client.app.state.engine
    yield engine
    engine.fault_hook = None


def _generate(client, **extra):
    return client.post("/generate/image", json={"prompt": "a red circle", **FAST, **extra})


def _generate_together(client, seeds) -> list:
    """One request per seed, all sent at once; the replies in the seeds' order."""
    return post_concurrently(client, "/generate/image",
                             [{"prompt": "a red circle", "seed": seed, **FAST} for seed in seeds])


def test_settings_choose_processes_for_several_devices():
    assert Settings(devices="cuda:0,cuda:1").resolved_worker_mode == "process"
    assert Settings(device="cuda").resolved_worker_mode == "thread"
    assert Settings(devices="cpu,cpu", worker_mode="Thread").resolved_worker_mode == "thread"
    assert Settings(device="cpu", worker_mode="process").resolved_worker_mode == "process"
    with pytest.raises(ValueError, match="worker_mode"):
        Settings(worker_mode="fibers")


def test_metric_events_recorded_in_a_worker_replay_on_the_app_registry():
    recorder, metrics = MetricsRecorder(), Metrics()
    recorder.stage_duration.labels(model="m", quant="fp", stage="denoise").observe(0.5)
    recorder.generated_images.inc(3)
    recorder.device_memory.labels(device="cuda:1", kind="peak").set(7)
    replay(metrics, recorder.drain())
    assert recorder.drain() == []
    registry = metrics.registry
    assert registry.get_sample_value("trdq_stage_duration_seconds_sum",
                                     {"model": "m", "quant": "fp", "stage": "denoise"}) == 0.5
    assert registry.get_sample_value("trdq_generated_images_total") == 3
    assert registry.get_sample_value("trdq_device_memory_bytes",
                                     {"device": "cuda:1", "kind": "peak"}) == 7


def test_each_device_is_served_by_its_own_process(client):
    info = client.get("/info").json()
    assert info["worker_mode"] == "process" and info["devices"] == ["cpu", "cpu"]
    pids = _worker_pids(client)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert all(worker["state"] == "ready" for worker in info["workers"])
    assert info["models"][0]["size_multiple"] == 16
    reply = _generate(client, seed=3)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-TRDQ-Device"] == "cpu"
    # the worker's observations reach this process's /metrics
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "trdq_stage_duration_seconds_count", stage="denoise") >= 1
    assert metric_value(metrics, "trdq_denoise_step_seconds_count") >= 2
    assert metric_value(metrics, "trdq_generated_images_total") >= 1
    assert metric_value(metrics, "trdq_device_memory_bytes", device="cpu", kind="allocated") > 0
    assert metric_value(metrics, "trdq_model_weight_bytes") > 0


def test_two_processes_run_batches_at_the_same_time(client, engine, tmp_path):
    engine.fault_hook = functools.partial(meet_the_other_worker, str(tmp_path))
    replies = _generate_together(client, (1, 2))
    assert [reply.status_code for reply in replies] == [200, 200], [r.text for r in replies]
    assert sorted(int(path.name) for path in tmp_path.iterdir()) == sorted(_worker_pids(client))


def test_failures_inside_a_worker_map_to_the_same_replies(client, engine):
    engine.fault_hook = functools.partial(raise_error, "crash")
    reply = _generate(client)
    assert reply.status_code == 500
    assert reply.json()["error"]["type"] == "generation_failed"
    assert "secret internals" not in reply.text
    engine.fault_hook = functools.partial(raise_error, "oom")
    reply = _generate(client)
    assert reply.status_code == 503 and reply.json()["error"]["type"] == "device_out_of_memory"
    engine.fault_hook = None
    assert _generate(client).status_code == 200


def test_a_timeout_stops_the_batch_inside_the_worker(client, engine):
    engine.settings.request_timeout_s = 0.5
    try:
        reply = _generate(client, width=128, height=128, num_inference_steps=100)
    finally:
        engine.settings.request_timeout_s = 300.0
    assert reply.status_code == 504
    wait_until(lambda: engine.idle, timeout_s=10)  # the worker stopped at its next step
    started = time.perf_counter()
    assert _generate(client).status_code == 200
    assert time.perf_counter() - started < 30


def test_async_job_progress_comes_from_the_worker_and_delete_stops_it(client, engine):
    job = client.post("/jobs/image", json={"prompt": "a red circle", **FAST, "width": 128,
                                           "height": 128, "num_inference_steps": 100})
    assert job.status_code == 202
    url = f"/jobs/{job.json()['id']}"

    def stepping() -> bool:
        status = client.get(url).json()
        assert status["state"] in ("queued", "running"), status
        return status["progress"]["step"] >= 1

    wait_until(stepping, timeout_s=60, interval_s=0.05)
    assert client.delete(url).json()["state"] == "cancelled"
    wait_until(lambda: engine.idle, timeout_s=10)  # the worker stopped at its next step
    assert client.get(url).json()["progress"]["step"] < 100


def test_a_killed_worker_fails_its_batch_alone_and_is_restarted(client, engine, tmp_path):
    # the device's restart counter is exported from the start, at 0
    assert metric_value(client.get("/metrics").text, "trdq_worker_restarts_total",
                        device="cpu") == 0
    engine.fault_hook = functools.partial(note_pid_and_sleep, str(tmp_path), 30)
    replies: list = []
    sender = threading.Thread(target=lambda: replies.append(_generate(client)))
    sender.start()
    wait_until(lambda: any(tmp_path.iterdir()), timeout_s=30)
    victim = int(next(tmp_path.iterdir()).name)
    engine.fault_hook = None
    os.kill(victim, signal.SIGKILL)  # mid-batch
    sender.join(timeout=60)
    assert replies[0].status_code == 500, replies[0].text
    error = replies[0].json()["error"]
    assert error["type"] == "worker_crashed" and "restarted" in error["message"]
    # the other worker keeps serving while the dead one restarts
    assert client.get("/readyz").status_code == 200
    assert _generate(client).status_code == 200
    wait_until(lambda: all(w["state"] == "ready" for w in client.get("/info").json()["workers"]),
               timeout_s=120, interval_s=0.5)
    workers = client.get("/info").json()["workers"]
    assert victim not in [worker["pid"] for worker in workers]
    assert sum(worker["restarts"] for worker in workers) == 1
    assert not _alive(victim)
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "trdq_worker_restarts_total", device="cpu") == 1
    assert metric_value(metrics, "trdq_errors_total", type="worker_crashed") == 1
    for seed in (1, 2):  # both serve again
        assert _generate(client, seed=seed).status_code == 200


def test_one_worker_process_restarts_behind_readyz_and_stops_with_the_app(tmp_path):
    settings = make_settings(tmp_path, device="cpu", worker_mode="process", threads=1)
    with TestClient(create_app(settings)) as client:
        (pid,) = _worker_pids(client)
        os.kill(pid, signal.SIGKILL)  # idle: nothing fails, but nothing serves until restarted
        wait_until(lambda: client.get("/readyz").status_code == 503, timeout_s=10)
        assert "restarting" in client.get("/readyz").json()["error"]["message"]
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=120,
                   interval_s=0.5)
        assert _generate(client).status_code == 200
        (restarted,) = _worker_pids(client)
    assert restarted != pid
    wait_until(lambda: not _alive(restarted), timeout_s=5)  # no orphan after shutdown


def test_a_worker_that_cannot_start_refuses_the_start_and_leaves_no_process(tmp_path):
    settings = make_settings(tmp_path, devices="cpu,cpu", model=str(tmp_path / "missing"))
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="failed to start"), TestClient(app):
        pass
    for worker in app.state.engine.workers:
        assert worker.pid is not None and not _alive(worker.pid)


@pytest.mark.slow  # two processes start together and one calibrates the zoo model
def test_worker_processes_starting_together_calibrate_once(tmp_path):
    """Both workers quantize at start-up from one empty cache (prompts of our own, so no
    shipped artifact matches): the artifact's file lock makes one calibrate and save,
    and the other load what it saved."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square top left\n")
    settings = make_settings(tmp_path, devices="cpu,cpu", quant="w8a8", threads=1,
                             calibration_prompts=prompts)
    with TestClient(create_app(settings)) as client:
        metrics = client.get("/metrics").text
        assert _generate(client).status_code == 200
        ids = {model["calibration_id"] for model in client.get("/info").json()["models"]}
    assert metric_value(metrics, "trdq_calibration_cache_total", result="miss") == 1
    assert metric_value(metrics, "trdq_calibration_cache_total", result="hit") == 1
    assert len(ids) == 1 and (tmp_path / "cache" / ids.pop()).is_dir()


@pytest.mark.gpu
def test_two_gpus_each_served_by_their_own_process(tmp_path):
    """On a 2-GPU machine: one process per GPU runs TR-DQ's kernels and (the default
    TRDQ_CUDA_GRAPHS=auto) its own CUDA graphs; the warm-up captured the request shape,
    so all three rounds replay; both GPUs work at once in every round."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    settings = make_settings(tmp_path, devices="cuda:0,cuda:1", quant="w8a8", max_batch=1,
                             warmup=True, warmup_size="32x32", warmup_steps=2)
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()
        assert info["worker_mode"] == "process"
        assert info["models"][0]["backend"] != "reference"
        for round_index in range(3):
            held = tmp_path / f"round{round_index}"
            held.mkdir()
            client.app.state.engine.fault_hook = functools.partial(
                meet_the_other_worker, str(held))
            replies = _generate_together(client, (1, 2))
            assert [reply.status_code for reply in replies] == [200, 200], [
                r.text for r in replies]
            assert sorted(r.headers["X-TRDQ-Device"] for r in replies) == ["cuda:0", "cuda:1"]
            assert len(list(held.iterdir())) == 2
        metrics = client.get("/metrics").text
    for device in ("cuda:0", "cuda:1"):
        assert metric_value(metrics, "trdq_device_memory_bytes", device=device,
                            kind="allocated") > 0


@pytest.mark.integration
@pytest.mark.slow  # a real server and two worker processes start: ~30-60 s on 2 cores
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_no_worker_process_outlives_the_server(tmp_path, sig):
    """SIGTERM: the server drains, stops its workers and exits 0. SIGKILL (nothing runs
    in the server any more): each worker sees its pipe close and exits by itself."""
    import subprocess
    import sys

    import httpx

    from tests.helpers.serving import free_port

    port = free_port()
    env = dict(os.environ, TRDQ_PORT=str(port), TRDQ_QUANT="fp", TRDQ_VIDEO_MODEL="none",
               TRDQ_WARMUP="false", TRDQ_CACHE_DIR=str(tmp_path), TRDQ_DEVICES="cpu,cpu",
               TRDQ_THREADS="1", TRDQ_LOG_LEVEL="info")
    process = subprocess.Popen([sys.executable, "-m", "server"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert process.poll() is None, "the server exited during start-up"
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s=240, interval_s=0.3)
        reply = httpx.post(f"{base}/generate/image", json={"prompt": "a", **FAST}, timeout=120)
        assert reply.status_code == 200
        pids = [w["pid"] for w in httpx.get(f"{base}/info").json()["workers"]]
        assert all(_alive(pid) for pid in pids)
        process.send_signal(sig)
        code = process.wait(timeout=120)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in pids), timeout_s=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
