"""TRDQ_CUDA_GRAPHS: refused without a CUDA device; the replay cache's rules (bounded,
eager fallback) checked on CPU with a stand-in for torch.cuda's graph API."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import create_app
from server.engine import models as engine_models
from server.settings import Settings
from tests.server.conftest import make_settings


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
    settings = make_settings(tmp_path, device="auto", cuda_graphs=True, video_model="none",
                             warmup=False)
    with pytest.raises(ValueError, match="TRDQ_CUDA_GRAPHS"), TestClient(create_app(settings)):
        pass


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: 'capture' records the forward, replay re-runs it
    on the static inputs into the static outputs (what a real replay computes)."""

    captured: ClassVar[list[_FakeGraph]] = []
    modes: ClassVar[list[str]] = []  # each capture's capture_error_mode
    streams: ClassVar[list] = []  # each capture's stream
    restored: ClassVar[list] = []  # what torch.cuda.set_stream / set_device were given

    def __init__(self):
        self.fn = None

    def replay(self):
        if self.fn is not None:  # right after capture the outputs are already computed
            self.fn()


class _FakeCapture:
    def __init__(self, graph, pool=None):
        self.graph = graph

    def __enter__(self):
        _FakeGraph.captured.append(self.graph)

    def __exit__(self, *exc):
        return False


def _fake_cuda(monkeypatch, fail_capture=False):
    from trdq.kernels import launch as base
    from trdq.runtime import cuda_graphs

    _FakeGraph.captured, _FakeGraph.modes, _FakeGraph.streams = [], [], []
    _FakeGraph.restored = []
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: ("stream", device))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("current", device))
    monkeypatch.setattr(torch.cuda, "set_stream", _FakeGraph.restored.append)
    monkeypatch.setattr(torch.cuda, "set_device", _FakeGraph.restored.append)
    monkeypatch.setattr(base, "_CAPTURE_STREAMS", {})

    def graph(g, pool=None, stream=None, capture_error_mode="global"):
        _FakeGraph.modes.append(capture_error_mode)
        _FakeGraph.streams.append(stream)
        if fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        return _FakeCapture(g, pool)

    monkeypatch.setattr(torch.cuda, "graph", graph)
    return cuda_graphs.CudaGraphForward


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * 2


def test_replay_captures_on_the_second_call_and_bounds_the_graphs(monkeypatch):
    CudaGraphForward = _fake_cuda(monkeypatch)
    net = _Net()
    forward = CudaGraphForward(net, max_graphs=1)
    x = torch.ones(3)
    assert torch.equal(net(x), x * 2) and not _FakeGraph.captured  # first call: eager
    out = net(x)  # second: captured
    assert torch.equal(out, x * 2) and len(_FakeGraph.captured) == 1 and len(forward.graphs) == 1
    # a capture must not fail other threads' CUDA calls (one engine worker per GPU), and
    # runs on a stream of its own GPU (not torch.cuda.graph's one stream for all GPUs)
    assert _FakeGraph.modes == ["thread_local"]
    assert _FakeGraph.streams == [("stream", torch.device("cuda", 0))]
    assert not _FakeGraph.restored  # a capture that succeeded leaves the thread's state
    graph, static, static_out = forward.graphs[next(iter(forward.graphs))]
    graph.fn = lambda: static_out.copy_(forward.forward(*static))  # what replay recomputes
    assert torch.equal(net(torch.full((3,), 5.0)), torch.full((3,), 10.0))
    # a new shape past the limit runs eagerly, never captured
    y = torch.ones(4)
    for _ in range(3):
        assert torch.equal(net(y), y * 2)
    assert len(forward.graphs) == 1 and len(_FakeGraph.captured) == 1


def test_a_failed_capture_leaves_those_shapes_eager_in_the_server_only(monkeypatch):
    CudaGraphForward = _fake_cuda(monkeypatch, fail_capture=True)
    net = _Net()
    forward = CudaGraphForward(net, eager_on_failure=True)  # the server's setting
    x = torch.ones(2)
    for _ in range(4):
        assert torch.equal(net(x), x * 2)
    assert not forward.graphs and len(forward.eager) == 1
    # the failed capture gave the thread back its stream and device before going eager
    assert _FakeGraph.restored == [("current", torch.device("cuda", 0)), 0]
    # the bench's: a +cg row fails rather than timing eager calls under its name
    strict = _Net()
    CudaGraphForward(strict)
    strict(x)
    with pytest.raises(RuntimeError, match="capturing"):
        strict(x)


@pytest.mark.gpu
def test_the_served_model_replays_from_cuda_graphs_and_matches_eager(tmp_path):
    """On a GPU: the same request with and without TRDQ_CUDA_GRAPHS gives the same image,
    and with it the denoiser's steps were captured and replayed (not run eagerly)."""
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
        settings = make_settings(tmp_path / str(graphs), device="cuda", quant="w8a8",
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
                forward = worker.models.get("image", "w8a8").pipe.transformer.forward
                assert forward.graphs and not forward.eager
    assert np.abs(pixels[True] - pixels[False]).max() <= 2
