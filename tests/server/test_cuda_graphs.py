"""TRDQ_CUDA_GRAPHS: the setting, refused without a CUDA device, and on a GPU the served
model replaying its steps (the replay cache itself: tests/runtime/test_cuda_graphs.py)."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import create_app
from server.engine import models as engine_models
from server.settings import Settings
from tests.helpers.serving import make_settings_with_video


def test_cuda_graphs_on_a_cpu_device_is_refused_naming_the_setting(monkeypatch, capsys):
    assert Settings().cuda_graphs == "auto"
    assert Settings(device="cpu").cuda_graphs == "auto"  # auto is off on CPU, not refused
    assert Settings(cuda_graphs="0").cuda_graphs is False
    assert Settings(cuda_graphs=" Auto ").cuda_graphs == "auto"
    with pytest.raises(ValidationError, match="must be auto, true"):
        Settings(cuda_graphs="sometimes")
    with pytest.raises(ValidationError, match="cuda_graphs"):
        Settings(device="cpu", cuda_graphs=True)
    with pytest.raises(ValidationError, match="cuda_graphs"):
        Settings(devices="cuda:0,cpu", cuda_graphs=True)
    assert Settings(device="cuda", cuda_graphs=True).cuda_graphs
    from server.__main__ import main

    monkeypatch.setenv("TRDQ_DEVICE", "cpu")
    monkeypatch.setenv("TRDQ_CUDA_GRAPHS", "1")
    assert main([]) == 2
    assert "invalid setting TRDQ_CUDA_GRAPHS: " in capsys.readouterr().err


def test_auto_replays_on_cuda_workers_only():
    assert engine_models.check_cuda_graphs("auto", torch.device("cuda", 0)) is True
    assert engine_models.check_cuda_graphs("auto", torch.device("cpu")) is False
    assert engine_models.check_cuda_graphs(False, torch.device("cuda", 0)) is False
    assert engine_models.check_cuda_graphs(True, torch.device("cuda", 0)) is True


def test_cuda_graphs_with_auto_on_a_machine_without_gpu_fails_start_up(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("auto resolves to cuda here")
    with pytest.raises(ValueError, match="TRDQ_CUDA_GRAPHS=1 needs a CUDA device"):
        engine_models.check_cuda_graphs(True, torch.device("cpu"))
    settings = make_settings_with_video(tmp_path, device="auto", cuda_graphs=True, video_model="none",
                             warmup=False)
    with pytest.raises(ValueError, match="TRDQ_CUDA_GRAPHS"), TestClient(create_app(settings)):
        pass


@pytest.mark.gpu
def test_the_served_model_replays_from_cuda_graphs_and_matches_eager(tmp_path):
    """On a GPU: the same request with and without TRDQ_CUDA_GRAPHS gives the same image,
    and with it the denoiser's steps and the text encoder were captured and replayed (not
    run eagerly)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    request = {"prompt": "a red circle", "seed": 7, "num_inference_steps": 6,
               "output_format": "png"}
    pixels = {}
    for graphs in (False, True):
        settings = make_settings_with_video(tmp_path / str(graphs), device="cuda", quant="w8a8",
                                 cuda_graphs=graphs, video_model="none", warmup=False)
        with TestClient(create_app(settings)) as client:
            for _ in range(2):  # the second request replays every step
                reply = client.post("/generate/image", json=request)
                assert reply.status_code == 200, reply.text
            b64 = reply.json()["images"][0]["b64"]
            image = Image.open(io.BytesIO(base64.b64decode(b64)))
            pixels[graphs] = np.asarray(image, dtype=np.int16)
            if graphs:
                worker = client.app.state.engine.workers[0]
                pipe = worker.models.get("image", "w8a8").pipe
                for forward in (pipe.transformer.forward, pipe.text_encoder.forward):
                    assert forward.graphs and not forward.eager
    assert np.abs(pixels[True] - pixels[False]).max() <= 2
