"""The timestep hook: group trace of a 20-step run with 4 groups, listeners, switches."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import fast, run_image
from trdq import api
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline
from trdq.timestep import GroupMap, QuantContext, TimestepHook

# DPM-Solver++ with 20 steps on a 1000-step schedule, boundaries 250/500/750
EXPECTED_TIMESTEPS = [999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300,
                      250, 200, 150, 100, 50]
EXPECTED_TRACE = [3] * 5 + [2] * 6 + [1] * 5 + [0] * 4


def test_group_map_edges():
    gm = GroupMap((250.0, 500.0, 750.0))
    assert [gm.group_of(t) for t in (0, 249.9, 250, 500, 749, 750, 999, 1000)] == \
        [0, 0, 1, 2, 2, 3, 3, 3]


def test_hook_reads_positional_and_tensor_timesteps():
    class Denoiser(torch.nn.Module):
        def forward(self, hidden_states, timestep=None):
            return hidden_states

    ctx = QuantContext(num_groups=4)
    hook = TimestepHook(GroupMap((250.0, 500.0, 750.0)), ctx).attach(Denoiser_ := Denoiser())
    Denoiser_(torch.zeros(2, 3), torch.tensor([800, 800]))
    assert ctx.group == 3
    Denoiser_(torch.zeros(2, 3), timestep=torch.tensor(100.0))
    assert ctx.group == 0 and hook.trace == [3, 0] and hook.switches_total == 1


@pytest.mark.slow  # ~1 minute; the hook's trace and switches: the tests above
def test_twenty_step_trace_with_four_groups(monkeypatch):
    pipe = tiny_pixart_pipeline()
    api.quantize(pipe, fast("w8a8", num_groups=4), progress=False,
                 calibration_prompts=TINY_PROMPTS)
    events = []
    hook = api.add_step_listener(pipe, events.append)
    run_image(pipe, TINY_PROMPTS[:1], steps=20)
    assert [round(t) for t in hook.timesteps] == EXPECTED_TIMESTEPS
    assert api.step_trace(pipe) == EXPECTED_TRACE
    assert [e.step_index for e in events] == list(range(20))
    assert [e.group for e in events] == EXPECTED_TRACE
    assert sum(e.switched for e in events) == 3
    assert all(e.seconds > 0 for e in events)
    switches_before = hook.switches_total
    run_image(pipe, TINY_PROMPTS[:1], steps=20)  # a second call: trace is per call
    assert api.step_trace(pipe) == EXPECTED_TRACE
    assert hook.switches_total == switches_before + 3
    # the timesteps forecast from DPM-Solver's schedule (what a CUDA timestep gets)
    from trdq import timestep as module

    monkeypatch.setattr(module, "_read_waits", lambda t: isinstance(t, torch.Tensor))
    copies = []
    monkeypatch.setattr(module, "copy_to_host_later",
                        lambda t, real=module.copy_to_host_later: copies.append(t) or real(t))
    run_image(pipe, TINY_PROMPTS[:1], steps=20)
    assert api.step_trace(pipe) == EXPECTED_TRACE and not hook.forecast_failed
    assert len(copies) == 19  # every step forecast but the first, which is read
    assert [round(t) for t in hook.timesteps] == EXPECTED_TIMESTEPS


class _Denoiser(torch.nn.Module):
    def forward(self, hidden_states, timestep=None):
        return hidden_states


def _forecasting_run(monkeypatch, scheduled, passed):
    """One call of four steps whose scheduler holds ``scheduled`` while the denoiser is
    passed ``passed``, with forecasting on for CPU tensors: (trace, host reads, hook)."""
    from types import SimpleNamespace

    from trdq import timestep as module

    reads = []
    monkeypatch.setattr(module, "_read_waits", lambda t: isinstance(t, torch.Tensor))
    real = module.timestep_value
    monkeypatch.setattr(module, "timestep_value", lambda t: reads.append(t) or real(t))
    ctx = QuantContext(num_groups=4)
    denoiser = _Denoiser()
    hook = TimestepHook(GroupMap((250.0, 500.0, 750.0)), ctx).attach(denoiser)
    scheduler = SimpleNamespace(timesteps=torch.tensor(scheduled), step_index=None)
    hook.begin_call(scheduler=scheduler)
    for i, t in enumerate(passed):
        denoiser(torch.zeros(2, 3), timestep=torch.tensor([t, t]))
        scheduler.step_index = i + 1  # what scheduler.step does
    hook.end_call()
    return hook.trace, len(reads), hook


def test_the_hook_forecasts_timesteps_from_the_scheduler_without_reading_them(monkeypatch):
    steps = [999.0, 700.0, 400.0, 100.0]
    trace, reads, hook = _forecasting_run(monkeypatch, steps, steps)
    assert trace == [3, 2, 1, 0] and not hook.forecast_failed
    assert reads == 1  # the first step only; the others are checked a step late


def test_a_wrong_forecast_turns_forecasting_off(monkeypatch, caplog):
    # the scheduler disagrees from the third step: that step runs with the forecast (it is
    # checked a step late), the fourth reads the passed value
    trace, reads, hook = _forecasting_run(monkeypatch, [999.0, 700.0, 400.0, 100.0],
                                          [999.0, 700.0, 100.0, 100.0])
    assert hook.forecast_failed and "reading the timestep on the host" in caplog.text
    assert trace == [3, 2, 1, 0] and reads == 2
    # a wrong first step is caught at once
    trace, reads, hook = _forecasting_run(monkeypatch, [999.0, 700.0], [100.0, 100.0])
    assert hook.forecast_failed and trace == [0, 0] and reads == 2


def test_only_timed_listeners_make_the_hook_wait_for_the_gpu(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    denoiser = _Denoiser()
    hook = TimestepHook(GroupMap((500.0,)), QuantContext(num_groups=2)).attach(denoiser)
    switched = []
    hook.add_listener(lambda event: switched.append(event.switched), timed=False)
    denoiser(torch.zeros(1), timestep=torch.tensor(900.0))
    denoiser(torch.zeros(1), timestep=torch.tensor(100.0))
    assert switched == [False, True] and not syncs
    timed = []
    hook.add_listener(lambda event: timed.append(event.seconds))
    denoiser(torch.zeros(1), timestep=torch.tensor(100.0))
    assert len(syncs) == 2 and len(timed) == 1  # before and after the step
    hook.remove_listener(hook._timed_listeners[0])
    denoiser(torch.zeros(1), timestep=torch.tensor(100.0))
    assert len(syncs) == 2
