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


def test_text_encoder_graphs_rehearse_the_capture_mask_path(monkeypatch):
    """Before a shape's first eager call, one encode with a padded mask (its result
    dropped) compiles the mask-tensor path transformers takes while a stream captures;
    masked and unmasked calls stay right."""
    from transformers import T5Config, T5EncoderModel

    from trdq.runtime.cuda_graphs import TextEncoderGraphForward

    _fake_cuda(monkeypatch)
    torch.manual_seed(0)
    config = T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    encoder = T5EncoderModel(config).eval()
    ids = torch.randint(0, 50, (1, 12))
    padded = torch.ones(1, 12, dtype=torch.long)
    padded[:, 7:] = 0
    masks_seen = []
    with torch.no_grad():
        want_ones = encoder(ids).last_hidden_state
        want_padded = encoder(ids, attention_mask=padded).last_hidden_state
        forward = TextEncoderGraphForward(encoder)
        original = forward.forward

        def recording(*args, **kwargs):  # every call the wrapper makes, rehearsals included
            masks_seen.append(kwargs.get("attention_mask"))
            return original(*args, **kwargs)

        forward.forward = recording
        # (the stand-in replays what its capture computed, so each key's data stays put)
        for _ in range(2):  # eager after the rehearsal, then captured
            got = encoder(ids, attention_mask=padded).last_hidden_state
            torch.testing.assert_close(got, want_padded)
        for _ in range(2):
            torch.testing.assert_close(encoder(ids).last_hidden_state, want_ones)
    assert len(forward.graphs) == 2 and len(forward.seen) == 2  # (ids, mask) and (ids)
    # each key: rehearsal, eager call, capture; the rehearsal's mask is the call's (or all
    # ones) with the last token dropped, a copy
    assert len(masks_seen) == 6 and masks_seen[4] is None and masks_seen[5] is None
    assert torch.equal(masks_seen[0], padded) and masks_seen[0] is not padded
    assert masks_seen[3].tolist() == [[1] * 11 + [0]]


def test_padded_mask_call_arguments():
    from trdq.runtime.cuda_graphs import with_padded_mask

    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.ones(2, 5, dtype=torch.long)
    args, kwargs = with_padded_mask((ids, mask), {})
    assert args[0] is ids and args[1][:, -1].eq(0).all() and args[1][:, :-1].eq(1).all()
    assert mask.eq(1).all()  # the caller's mask is not changed
    args, kwargs = with_padded_mask((), {"input_ids": ids})
    assert kwargs["attention_mask"].tolist() == [[1, 1, 1, 1, 0]] * 2
    assert with_padded_mask((torch.zeros(3),), {}) is None  # no [batch, tokens] ids


def test_a_capture_runs_compiled_code_eagerly_rather_than_recompile(monkeypatch):
    """Inside a capture the compiler's stance is eager-on-recompile (a compile there fails
    the capture); before and after it, the default."""
    from torch._dynamo import eval_frame

    CudaGraphForward = _fake_cuda(monkeypatch)
    stances = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            stances.append(eval_frame._stance.stance)
            return x + 1

    net = Recorder()
    CudaGraphForward(net)
    net(torch.ones(2))
    net(torch.ones(2))
    assert stances == ["default", "eager_on_recompile"]
    assert eval_frame._stance.stance == "default"
