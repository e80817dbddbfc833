"""TRDQ_COMPILE on a CPU worker: the denoiser's blocks and the image VAE's decoder are
compiled before the first request, /info says so, and a request still generates.

Slow: Inductor compiles the zoo's block and decoder on two cores (about a minute)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.helpers.serving import make_settings_with_video


@pytest.mark.slow
def test_compiled_worker_reports_its_compiled_parts_and_generates(tmp_path):
    settings = make_settings_with_video(tmp_path, device="cpu", quant="w8a8", video_model="none",
                                        compile=True, warmup=False)
    with TestClient(create_app(settings)) as client:
        model = client.get("/info").json()["models"][0]
        assert model["compiled"] is True
        assert model["compiled_blocks"] >= 1
        assert model["compiled_vae_decoder"] is True
        response = client.post("/generate/image", json={"prompt": "a red circle", "seed": 1,
                                                        "num_inference_steps": 4})
    assert response.status_code == 200, response.text
