"""Health, readiness, info, metrics, overload and limits."""

import threading

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from tests.helpers.serving import make_settings_with_video


def _samples(text: str) -> dict:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_health_ready_info(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/info").json()
    assert info["ready"] is True
    tasks = {(m["task"], m["quant"]) for m in info["models"]}
    assert tasks == {("image", "fp"), ("video", "fp")}
    for model in info["models"]:
        assert model["weight_bytes"]["transformer"]["float32"] > 0
    kernels = info["kernels"]  # the kernel switches in force (TRDQ_CPU_NATIVE, ...)
    assert {"cpu_native", "cpu_int_mm", "cpu_prepack", "gemm_tma", "native_cache_dir",
            "cpu_gemm"} <= set(kernels)
    assert isinstance(kernels["cpu_int_mm"], bool)  # resolved for this CPU, not "auto"


def test_readyz_is_503_until_the_models_are_loaded(tmp_path):
    app = create_app(make_settings_with_video(tmp_path))
    plain = TestClient(app)  # no context manager: the lifespan (loading) never runs
    reply = plain.get("/readyz")
    assert reply.status_code == 503
    assert reply.json()["error"]["type"] == "not_ready"
    assert plain.post("/generate/image", json={"prompt": "x"}).status_code == 503


def test_metrics_parse_and_hold_the_named_series_after_a_request(client):
    assert client.post(
        "/generate/image", json={"prompt": "a red circle", "num_inference_steps": 3}
    ).status_code == 200
    samples = _samples(client.get("/metrics").text)

    def total(name, **labels):
        return sum(
            s.value for s in samples.get(name, [])
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert total("trdq_request_duration_seconds_count", endpoint="/generate/image", status="200") >= 1
    assert total("trdq_queue_wait_seconds_count") >= 1
    assert total("trdq_batch_size_count") >= 1
    assert total("trdq_denoise_step_seconds_count", model="tiny-shapes-t2i", quant="fp") >= 3
    assert total("trdq_stage_duration_seconds_count", stage="vae_decode") >= 1
    assert total("trdq_stage_duration_seconds_count", stage="encode") >= 1
    assert total("trdq_generated_images_total") >= 1
    assert total("trdq_device_memory_bytes", device="cpu", kind="allocated") > 0
    assert total("trdq_device_memory_bytes", device="cpu", kind="total") > 0
    assert total("trdq_model_weight_bytes", model="tiny-shapes-t2i", component="transformer") > 0
    assert "trdq_queue_depth" in samples and "trdq_inflight_requests" in samples
    assert "trdq_calibration_cache_total" in samples
    assert total("process_resident_memory_bytes") > 0


def test_a_full_queue_answers_429_with_retry_after(tmp_path):
    settings = make_settings_with_video(tmp_path, max_queue=1, max_batch=1, video_model="none")
    replies = []
    with TestClient(create_app(settings)) as test_client:
        def slow_request():
            replies.append(test_client.post(
                "/generate/image", json={"prompt": "a red circle", "num_inference_steps": 30}
            ))

        threads = [threading.Thread(target=slow_request) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = test_client.get("/metrics").text
    statuses = sorted(reply.status_code for reply in replies)
    assert 429 in statuses and 200 in statuses, statuses
    rejected = next(reply for reply in replies if reply.status_code == 429)
    assert rejected.headers["retry-after"].isdigit()
    assert rejected.json()["error"]["type"] == "queue_full"
    assert 'trdq_errors_total{type="queue_full"}' in metrics


def test_disabled_model_endpoint_is_404(tmp_path):
    with TestClient(create_app(make_settings_with_video(tmp_path, video_model="none"))) as test_client:
        reply = test_client.post("/generate/video", json={"prompt": "a blue square"})
    assert reply.status_code == 404
    assert "video" in reply.json()["error"]["message"]


def test_body_size_limit_and_api_key(tmp_path):
    settings = make_settings_with_video(
        tmp_path, api_key="s3cret", max_body_bytes=2048, video_model="none", warmup=False
    )
    with TestClient(create_app(settings)) as test_client:
        assert test_client.get("/healthz").status_code == 200  # probes stay open
        assert test_client.get("/metrics").status_code == 200
        reply = test_client.post("/generate/image", json={"prompt": "x"})
        assert reply.status_code == 401 and reply.json()["error"]["type"] == "unauthorized"
        wrong = {"authorization": "Bearer nope"}
        assert test_client.post("/generate/image", json={"prompt": "x"}, headers=wrong).status_code == 401
        right = {"authorization": "Bearer s3cret"}
        big = test_client.post("/generate/image", json={"prompt": "x" * 5000}, headers=right)
        assert big.status_code == 413
        ok = test_client.post(
            "/generate/image", json={"prompt": "x", "num_inference_steps": 2}, headers=right
        )
        assert ok.status_code == 200


def test_text_encoder_int8_serves_and_shows_in_info_and_metrics(tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    settings = Settings(quant="fp", cache_dir=tmp_path, video_model="none", warmup=False,
                        text_encoder_quant="int8")
    with TestClient(create_app(settings)) as client:
        reply = client.post("/generate/image", json={"prompt": "a red circle",
                                                     "num_inference_steps": 2})
        assert reply.status_code == 200, reply.text
        info = client.get("/info").json()
        metrics = client.get("/metrics").text
    assert info["models"][0]["text_encoder_quant"] == "int8"
    from tests.helpers.serving import metric_value

    int8_bytes = metric_value(metrics, "trdq_model_weight_bytes", component="text_encoder",
                              dtype="int8")
    assert int8_bytes > 0
