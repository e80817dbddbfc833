"""The CUDA-graph replay cache (``trdq.runtime.cuda_graphs``): capture on the second call,
bounded, eager fallback in the server only; checked on CPU with a stand-in for
torch.cuda's graph API."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch


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
    # the failed capture gave the thread back its stream and device before going eager,
    # then tried an empty capture to end the CUDA generators' capture (which fails here
    # too, every capture does: the stream and device are given back again)
    thread_state = [("current", torch.device("cuda", 0)), 0]
    assert _FakeGraph.restored == thread_state * 2
    assert len(_FakeGraph.modes) == 2 and _FakeGraph.streams[1] == _FakeGraph.streams[0]
    # the bench's: a +cg row fails rather than timing eager calls under its name
    strict = _Net()
    CudaGraphForward(strict)
    strict(x)
    with pytest.raises(RuntimeError, match="capturing"):
        strict(x)


class _Encoder(torch.nn.Module):
    """A text encoder's call shape: tensors and flags in, a ``ModelOutput`` out."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        from transformers.modeling_outputs import BaseModelOutput

        hidden = input_ids.float() * self.scale
        states = (hidden, hidden + 1) if output_hidden_states else None
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=states)


def test_constant_arguments_key_their_own_graph_and_model_outputs_are_copied(monkeypatch):
    CudaGraphForward = _fake_cuda(monkeypatch)
    encoder = _Encoder()
    forward = CudaGraphForward(encoder)
    ids = torch.ones(1, 4)
    for flag in (False, True):  # each flag: eager, then captured
        for _ in range(2):
            out = encoder(ids, output_hidden_states=flag)
            assert type(out).__name__ == "BaseModelOutput"
            assert (out.hidden_states is not None) == flag
    assert len(forward.graphs) == 2
    # a copy: the next replay overwrites the static outputs, not what the caller holds
    held = encoder(ids, output_hidden_states=True)
    for _graph, _static, static_out in forward.graphs.values():
        assert held.last_hidden_state is not static_out.last_hidden_state
        assert held.hidden_states is not static_out.hidden_states


def test_graph_text_encoders_wraps_each_cuda_encoder_once(monkeypatch):
    from types import SimpleNamespace

    from trdq.runtime.cuda_graphs import (
        CudaGraphForward,
        graph_text_encoders,
        ungraph_text_encoders,
    )

    _fake_cuda(monkeypatch)
    on_gpu, on_cpu = _Encoder(), _Encoder()
    monkeypatch.setattr(type(on_gpu.scale), "is_cuda", property(lambda t: t is on_gpu.scale))
    pipe = SimpleNamespace(text_encoder=on_gpu, text_encoder_2=on_cpu, text_encoder_3=None)
    assert graph_text_encoders(pipe) == 1
    assert isinstance(on_gpu.__dict__["forward"], CudaGraphForward)
    assert "forward" not in on_cpu.__dict__
    assert graph_text_encoders(pipe) == 0  # a shared encoder is wrapped once
    ungraph_text_encoders(pipe)
    assert "forward" not in on_gpu.__dict__


def test_text_encoder_graphs_take_an_all_ones_mask_as_no_mask(monkeypatch):
    """An all-ones mask is no mask to a T5 encode; passed as None, the eager call before
    the capture and the capture take one path (transformers skips its all-ones shortcut
    while a stream captures), and a prompt with or without such a mask is one graph."""
    from transformers import T5Config, T5EncoderModel

    from trdq.runtime.cuda_graphs import TextEncoderGraphForward, without_all_ones_mask

    _fake_cuda(monkeypatch)
    torch.manual_seed(0)
    config = T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    encoder = T5EncoderModel(config).eval()
    ids = torch.randint(0, 50, (1, 12))
    ones = torch.ones(1, 12, dtype=torch.long)
    padded = ones.clone()
    padded[:, 7:] = 0
    with torch.no_grad():
        want_ones = encoder(ids, attention_mask=ones).last_hidden_state
        want_padded = encoder(ids, attention_mask=padded).last_hidden_state
        assert torch.equal(encoder(ids).last_hidden_state, want_ones)
        forward = TextEncoderGraphForward(encoder)
        for _ in range(3):
            got = encoder(ids, attention_mask=ones).last_hidden_state
            torch.testing.assert_close(got, want_ones)
            got = encoder(ids, attention_mask=padded).last_hidden_state
            torch.testing.assert_close(got, want_padded)
        encoder(ids)
    assert len(forward.graphs) == 2  # no mask (all ones or absent), and the padded one

    args, kwargs = without_all_ones_mask((ids, ones), {})
    assert args[1] is None and args[0] is ids and kwargs == {}
    args, kwargs = without_all_ones_mask((ids,), {"attention_mask": padded})
    assert kwargs["attention_mask"] is padded
