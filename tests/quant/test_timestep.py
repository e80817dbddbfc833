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
def test_twenty_step_trace_with_four_groups():
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
