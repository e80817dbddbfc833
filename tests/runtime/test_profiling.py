"""The pipeline profiler (``trdq.runtime.profiling``): stage times and step listeners,
read when the call ends (CUDA marks are events; on the CPU the host clock)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from trdq.runtime.profiling import PipelineProfiler


class _Slow(torch.nn.Module):
    """Takes ``seconds`` a forward."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, hidden_states, timestep=None):
        time.sleep(self.seconds)
        return hidden_states


def _pipe():
    return SimpleNamespace(text_encoder=_Slow(0.02), transformer=_Slow(0.01))


def test_a_profiled_call_reports_its_stages_and_steps_when_it_ends():
    pipe = _pipe()
    profiler = PipelineProfiler(pipe)
    heard = []
    profiler.add_step_listener(lambda seconds, timestep: heard.append((seconds, timestep)))
    with profiler.call() as profile:
        pipe.text_encoder(torch.zeros(1))
        for t in (999, 500):
            pipe.transformer(torch.zeros(2), torch.tensor([t, t]))
        assert not heard  # the listeners hear of the steps once the call is over
        time.sleep(0.03)  # "decoding"
    assert [t for _, t in heard] == [999.0, 500.0]
    assert profile.step_timesteps == [999.0, 500.0]
    assert all(0.01 <= s < 0.5 for s in profile.step_seconds)
    assert 0.02 <= profile.text_encode_s < 0.5 and 0.03 <= profile.decode_s < 0.5
    assert profile.total_s >= profile.text_encode_s + profile.denoise_s + profile.decode_s


def test_steps_outside_a_call_are_reported_at_once_and_a_failed_call_reports_none():
    pipe = _pipe()
    profiler = PipelineProfiler(pipe)
    heard = []
    profiler.add_step_listener(lambda seconds, timestep: heard.append(timestep))
    pipe.transformer(torch.zeros(2), timestep=7.0)  # a warm-up, say
    assert heard == [7.0]
    with pytest.raises(RuntimeError), profiler.call() as profile:
        pipe.transformer(torch.zeros(2), torch.tensor(5))
        raise RuntimeError("the step failed")
    assert heard == [7.0] and profile.step_seconds == []
    with profiler.call() as profile:  # the next call starts clean
        pipe.transformer(torch.zeros(2), torch.tensor(3))
    assert heard == [7.0, 3.0] and len(profile.step_seconds) == 1


class _Matmuls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(2048, 2048))

    def forward(self, hidden_states, timestep=None):
        for _ in range(20):
            hidden_states = torch.tanh(hidden_states @ self.weight)
        return hidden_states


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_marks_time_the_steps_without_waiting_for_them():
    pipe = SimpleNamespace(text_encoder=_Matmuls().cuda(), transformer=_Matmuls().cuda())
    profiler = PipelineProfiler(pipe)
    heard = []
    profiler.add_step_listener(lambda seconds, timestep: heard.append(timestep))
    x = torch.randn(2048, 2048, device="cuda")
    timesteps = torch.tensor([999.0, 500.0], device="cuda")
    with profiler.call() as profile:
        pipe.text_encoder(x)
        for t in timesteps:
            x = pipe.transformer(x, t.expand(2))
    assert heard == [999.0, 500.0]
    assert all(s > 0 for s in profile.step_seconds) and profile.text_encode_s > 0
    # 20 GEMMs of 2048^3 take ~0.1-2 ms on a GPU: the marks saw the work, not only launches
    assert all(1e-5 < s < 1.0 for s in profile.step_seconds)
