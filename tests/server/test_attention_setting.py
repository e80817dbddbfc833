"""TRDQ_ATTENTION: auto serves SDPA where FA3 cannot run (and says so in /info); an
explicit FA3 backend on such a worker refuses the start, naming the setting."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import create_app
from server.settings import Settings
from tests.helpers.serving import make_settings_with_video


def test_attention_setting_takes_the_backend_names_only():
    assert Settings().attention == "auto"
    assert Settings(attention="fp8").attention == "fp8"
    assert Settings(attention="fp8-long").attention == "fp8-long"
    assert Settings(attention="fp8-static").attention == "fp8-static"
    with pytest.raises(ValidationError, match="attention"):
        Settings(attention="fp4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a worker without a GPU")
@pytest.mark.parametrize("attention", ["fp8", "fp8-static"])
def test_fp8_attention_on_a_cpu_worker_fails_start_up_naming_the_setting(tmp_path, attention):
    settings = make_settings_with_video(tmp_path, device="cpu", quant="w8a8", attention=attention,
                             video_model="none", warmup=False)
    with (
        pytest.raises(ValueError, match=f"TRDQ_ATTENTION={attention}: .*needs a CUDA device"),
        TestClient(create_app(settings)),
    ):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a worker without a GPU")
def test_auto_serves_sdpa_on_the_cpu_and_info_says_so(tmp_path):
    settings = make_settings_with_video(tmp_path, device="cpu", quant="w8a8,fp", video_model="none",
                             warmup=False)
    with TestClient(create_app(settings)) as client:
        models = client.get("/info").json()["models"]
    by_quant = {m["quant"]: m for m in models}
    assert by_quant["w8a8"]["attention"] == "sdpa"
    assert "attention" not in by_quant["fp"]  # full precision keeps diffusers' processors


def test_fp8_static_records_at_start_up_and_serves_through_the_calibrated_kernels(
        tmp_path, monkeypatch):
    """The server's wiring of TRDQ_ATTENTION=fp8-static, on the CPU: FA3 stood in for by its
    oracle (the same e4m3 roundings in float32), the statistics recorded over the zoo's
    calibration prompts at start-up, /info naming the kernel, generations served by it."""
    from trdq.kernels import fa3_attention as fa3
    from trdq.nn.static_attention import StaticFp8Attention

    calls = []

    def oracle(q, k, v, stats=None):
        calls.append(q.shape)
        return fa3.fp8_attention_reference(q, k, v, stats=stats).to(q.dtype)

    monkeypatch.setattr(fa3, "fa3_status", lambda device: (True, "ok"))
    monkeypatch.setattr(fa3, "fa3_fp8_attention", oracle)
    monkeypatch.setattr("trdq.nn.static_attention.STATIC_MIN_TOKENS", 0)  # the zoo's are short
    settings = make_settings_with_video(tmp_path, device="cpu", quant="w8a8", video_model="none",
                                        attention="fp8-static", warmup=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/info").json()["models"][0]["attention"] == "fp8-static"
        transformer = client.app.state.engine.models.all()[0].pipe.transformer
        processors = [m.processor for m in transformer.modules() if hasattr(m, "processor")]
        assert any(isinstance(getattr(p, "kernel", None), StaticFp8Attention) for p in processors)
        reply = client.post("/generate/image", json={"prompt": "a red circle", "seed": 1,
                                                     "num_inference_steps": 4})
    assert reply.status_code == 200, reply.text
    assert calls  # the served generation attended through the static kernel
