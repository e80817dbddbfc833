"""Behind a real uvicorn: client disconnects cancel work; the official openai client."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.helpers.serving import FAST, live_server, make_settings, metric_value, wait_until

KEY = "sk-test-0123456789"


@pytest.mark.integration
def test_client_disconnect_cancels_running_and_queued_work(tmp_path):
    with live_server(make_settings(tmp_path, max_batch=1, max_steps=1000)) as (base, app):
        engine = app.state.engine
        assert httpx.post(f"{base}/generate/image", json={"prompt": "warm", **FAST},
                          timeout=120).status_code == 200
        long = {"prompt": "a red circle", **FAST, "num_inference_steps": 1000}
        outcomes = []

        def impatient_client() -> None:
            try:
                httpx.post(f"{base}/generate/image", json=long, timeout=2.0)
                outcomes.append("finished")  # pragma: no cover
            except httpx.ReadTimeout:
                outcomes.append("gave up")  # httpx closes the connection

        threads = [threading.Thread(target=impatient_client) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes == ["gave up", "gave up"]
        # One was running (stops at its next step), one queued (dropped): the worker is
        # free long before 1000 steps could have run.
        wait_until(lambda: engine.idle, timeout_s=20)
        metrics = httpx.get(f"{base}/metrics").text
        assert metric_value(metrics, "trdq_cancelled_generations_total", reason="client") == 2
        assert metric_value(metrics, "trdq_errors_total", type="client_closed") == 2
        steps = metric_value(metrics, "trdq_denoise_step_seconds_count")
        assert steps < 2 + 500, steps  # warm-up 2 + a fraction of one 1000-step run
        assert metric_value(metrics, "trdq_inflight_requests") == 0
        assert httpx.post(f"{base}/generate/image", json={"prompt": "after", **FAST},
                          timeout=120).status_code == 200


@pytest.mark.integration
def test_openai_client_against_the_images_route(tmp_path):
    with live_server(make_settings(tmp_path, api_key=KEY)) as (base, _app):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)
        result = client.images.generate(
            prompt="a red circle top left", n=2, size="32x32", response_format="b64_json",
            extra_body={"seed": 7, "num_inference_steps": 2},
        )
        assert len(result.data) == 2
        images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]
        assert all(image.size == (32, 32) and image.format == "PNG" for image in images)
        assert result.data[0].b64_json != result.data[1].b64_json  # seeds 7 and 8
        # The same seed through the native route gives the same image. The OpenAI call ran
        # n=2 as one batch and the native one alone: CPU GEMMs of other shapes round
        # differently, so allow the few levels test_batching measures, not exact bytes.
        native = httpx.post(f"{base}/generate/image", timeout=120,
                            headers={"authorization": f"Bearer {KEY}"},
                            json={"prompt": "a red circle top left", "seed": 7, **FAST})
        native_pixels = np.asarray(Image.open(io.BytesIO(
            base64.b64decode(native.json()["images"][0]["b64"]))), dtype=np.int16)
        openai_pixels = np.asarray(images[0], dtype=np.int16)
        assert np.abs(native_pixels - openai_pixels).max() <= 4

        with pytest.raises(openai.UnprocessableEntityError) as url_error:
            client.images.generate(prompt="x", response_format="url")
        assert "b64_json" in str(url_error.value)
        with pytest.raises(openai.UnprocessableEntityError):
            client.images.generate(prompt="x", model="dall-e-3")  # not the served model
        with pytest.raises(openai.UnprocessableEntityError):
            client.images.generate(prompt="x", size="1000x1000000")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).images.generate(
                prompt="x")
