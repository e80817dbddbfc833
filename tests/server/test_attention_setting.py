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
