"""Async jobs: 202 + id, state and progress, SSE events, result, cancel, bounded retention."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from tests.helpers.serving import FAST, make_settings, metric_value, wait_until


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("jobs"), video_model="tiny-shapes-t2v",
                             max_batch=1)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _finished(client, job_id: str) -> dict:
    status = {}

    def done() -> bool:
        status.update(client.get(f"/jobs/{job_id}").json())
        return status["state"] in ("succeeded", "failed", "cancelled")

    wait_until(done)
    return status


@pytest.fixture
def slow_image_steps(client):
    """Each image step takes at least 50 ms, so the event stream (polled every
    EVENT_POLL_S) sees a job move even on an idle machine, where 6 small steps take a
    few milliseconds."""
    listeners = client.app.state.engine.models.get("image", None).profiler._step_listeners
    listener = lambda seconds, timestep: time.sleep(0.05)
    listeners.append(listener)
    yield
    listeners.remove(listener)


def test_image_job_lifecycle_with_progress_events(client, slow_image_steps):
    reply = client.post("/jobs/image", json={"prompt": "a red circle", "seed": 5,
                                             **FAST, "num_inference_steps": 6})
    assert reply.status_code == 202, reply.text
    job = reply.json()
    assert reply.headers["location"] == f"/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["progress"]["total"] == 6

    events = _events(client.get(f"/jobs/{job['id']}/events").text)  # ends with the job
    assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded"
    steps = [data["progress"]["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and len(steps) >= 2  # progress moved while it ran
    assert any(data["state"] == "running" for _, data in events)

    status = client.get(f"/jobs/{job['id']}").json()
    assert status["progress"] == {"step": 6, "total": 6}
    assert status["result_url"] == f"/jobs/{job['id']}/result"
    assert status["finished_at"] >= status["started_at"] >= status["created_at"]

    result = client.get(status["result_url"])
    assert result.status_code == 200
    body = result.json()
    assert body["images"][0]["seed"] == 5
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["b64"])))
    assert image.size == (32, 32)
    raw = client.get(status["result_url"], headers={"accept": "image/png"})
    assert raw.headers["content-type"] == "image/png" and raw.content[:4] == b"\x89PNG"
    assert client.get(status["result_url"], headers={"accept": "image/webp"}).status_code == 406

    # The same request through the synchronous route gives the same bytes.
    sync = client.post("/generate/image", json={"prompt": "a red circle", "seed": 5,
                                                **FAST, "num_inference_steps": 6})
    assert sync.json()["images"][0]["b64"] == body["images"][0]["b64"]

    assert client.delete(f"/jobs/{job['id']}").json()["state"] == "succeeded"
    assert client.get(f"/jobs/{job['id']}").status_code == 404  # result discarded


def test_video_job_result(client):
    reply = client.post("/jobs/video", json={"prompt": "a blue square", "num_frames": 2,
                                             "output_format": "gif", **FAST})
    assert reply.status_code == 202
    status = _finished(client, reply.json()["id"])
    assert status["state"] == "succeeded", status
    video = client.get(status["result_url"]).json()["videos"][0]
    assert video["num_frames"] == 2 and video["format"] == "gif"
    assert Image.open(io.BytesIO(base64.b64decode(video["b64"]))).n_frames == 2


def test_delete_cancels_queued_and_running_jobs(client):
    slow = {"prompt": "a red circle", **FAST, "num_inference_steps": 40}
    running = client.post("/jobs/image", json=slow).json()
    queued = client.post("/jobs/image", json=slow).json()
    wait_until(lambda: client.get(f"/jobs/{running['id']}").json()["progress"]["step"] >= 1)
    assert client.get(f"/jobs/{queued['id']}").json()["state"] == "queued"

    assert client.delete(f"/jobs/{queued['id']}").json()["state"] == "cancelled"
    cancelled = client.delete(f"/jobs/{running['id']}").json()
    assert cancelled["state"] == "cancelled"
    engine = client.app.state.engine
    wait_until(lambda: engine.idle, timeout_s=30)  # stopped at its next step
    assert client.get(f"/jobs/{running['id']}").json()["progress"]["step"] < 40
    result = client.get(f"/jobs/{running['id']}/result")
    assert result.status_code == 409 and result.json()["error"]["type"] == "job_cancelled"
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "trdq_cancelled_generations_total", reason="user") >= 2
    # The worker is free: a new job runs at once.
    assert _finished(client, client.post("/jobs/image", json={"prompt": "x", **FAST})
                     .json()["id"])["state"] == "succeeded"


def test_unfinished_result_unknown_and_malformed_ids(client):
    job = client.post("/jobs/image", json={"prompt": "x", **FAST, "num_inference_steps": 20})
    early = client.get(f"/jobs/{job.json()['id']}/result")
    assert early.status_code == 409 and early.headers["retry-after"] == "1"
    client.delete(f"/jobs/{job.json()['id']}")
    missing = client.get("/jobs/" + "0" * 24)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "job_not_found"
    assert client.get("/jobs/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/jobs/not-an-id").status_code == 422


def test_retention_is_bounded_by_count_and_time(tmp_path):
    settings = make_settings(tmp_path, max_jobs=2, job_ttl_s=1.0, max_batch=1)
    with TestClient(create_app(settings)) as client:
        first, second = (client.post("/jobs/image", json={"prompt": "x", **FAST}).json()
                         for _ in range(2))
        for job in (first, second):
            assert _finished(client, job["id"])["state"] == "succeeded"
        third = client.post("/jobs/image", json={"prompt": "x", **FAST})
        assert third.status_code == 202
        assert client.get(f"/jobs/{first['id']}").status_code == 404  # oldest finished evicted
        assert client.get(f"/jobs/{second['id']}").status_code == 200
        _finished(client, third.json()["id"])
        for job_id in (second["id"], third.json()["id"]):
            client.delete(f"/jobs/{job_id}")

        # Every held job unfinished: a further one is refused, never silently dropped.
        slow = {"prompt": "x", **FAST, "num_inference_steps": 30}
        held = [client.post("/jobs/image", json=slow).json()["id"] for _ in range(2)]
        busy = client.post("/jobs/image", json=slow)
        assert busy.status_code == 429 and busy.json()["error"]["type"] == "too_many_jobs"
        assert busy.headers["retry-after"].isdigit()
        for job_id in held:
            client.delete(f"/jobs/{job_id}")
        wait_until(lambda: client.app.state.engine.idle)

        # Time: a finished job disappears once its TTL has passed.
        expired = client.post("/jobs/image", json={"prompt": "x", **FAST}).json()
        _finished(client, expired["id"])
        time.sleep(1.2)
        assert client.get(f"/jobs/{expired['id']}").status_code == 404
