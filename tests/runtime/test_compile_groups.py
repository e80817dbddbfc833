"""torch.compile of a quantized denoiser: switching timestep groups must not recompile.

Regression: dynamic mode once branched on each layer's Python clip ratios, so every
(block, group) pair compiled its own graph and regional compiles hit dynamo's recompile
limit (then ran eagerly). The per-group values are now read on the device.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import fast, run_image
from trdq import api
from trdq.runtime.compile import compile_denoiser
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline


@pytest.mark.parametrize("preset", [pytest.param("w8a8", marks=pytest.mark.slow), "w8a8-static"])
def test_group_switches_do_not_recompile(preset):
    torch._dynamo.reset()
    pipe = tiny_pixart_pipeline()
    api.quantize(pipe, fast(preset, num_groups=4), progress=False,
                 calibration_prompts=TINY_PROMPTS)
    compile_denoiser(pipe.transformer, "regional")
    run_image(pipe, TINY_PROMPTS[:1], steps=2)  # compiles for these shapes
    with torch._dynamo.config.patch(error_on_recompile=True):
        run_image(pipe, TINY_PROMPTS[:1], steps=8)  # visits every group
    torch._dynamo.reset()


def test_the_group_tensor_made_under_inference_mode_updates_under_no_grad():
    """A first pipeline call under inference_mode (the server's) creates the context's
    group tensor; a later call under diffusers' plain no_grad must still update it in
    place (CUDA graphs read it at its address)."""
    from trdq.timestep import QuantContext

    context = QuantContext(num_groups=4)
    with torch.inference_mode():
        context.set_group(1, torch.device("cpu"))
    index = context.group_index
    with torch.no_grad():
        context.set_group(3, torch.device("cpu"))
    assert context.group_index is index and int(index) == 3
