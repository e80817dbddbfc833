"""The DiT families' MLPs with GELU and the next quantizer as one op (trdq.nn.fused_mlp)
against diffusers' own forward on the same quantized layers, on CPU (the ops' reference
path; the Triton kernels are checked against it in tests/kernels).

Both paths quantize the same values: diffusers rounds the GELU output to bf16 before the
quantizer divides by its scale, the fused op stays in float32 and multiplies by the
reciprocal, so a few codes land one e4m3 step apart; the bound says "the same
computation", far above what a wrong row, scale or concatenation order would give.
"""

from __future__ import annotations

import pytest
import torch

from tests.integrations.family_helpers import fast_family, latent_run
from trdq import api
from trdq.nn import fused_mlp
from trdq.nn.fused_mlp import fuse_mlps, unfuse_mlps
from trdq.primitives import psnr_db
from trdq.testing.tiny import TINY_PROMPTS
from trdq.testing.tiny_families import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline


def _quantized(family: str, preset: str = "fp8-norot"):
    video = family == "wan"
    factory = {"flux": tiny_flux_pipeline, "sd3": tiny_sd3_pipeline, "wan": tiny_wan_pipeline}
    pipe = factory[family]()
    api.quantize(pipe, fast_family(preset, video=video), backend="reference", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    return pipe, latent_run(pipe, video)[0]


def _counted(monkeypatch, name: str) -> list[int]:
    """Count the calls of ``fused_mlp.<name>`` (the op the fused forwards call)."""
    calls: list[int] = []
    real = getattr(fused_mlp, name)
    monkeypatch.setattr(fused_mlp, name, lambda *a: (calls.append(1), real(*a))[1])
    return calls


@pytest.mark.parametrize("family,feed_forwards,single_blocks", [
    ("flux", 4, 2),  # two double-stream blocks (image and text feed-forwards), two single
    ("sd3", 3, 0),  # the last block's text stream is pre-only: no feed-forward
    ("wan", 2, 0),
])
def test_fused_mlps_match_diffusers_forward(family, feed_forwards, single_blocks, monkeypatch):
    pipe, latents = _quantized(family)
    unfused = latents()
    assert fuse_mlps(pipe.transformer) == feed_forwards + single_blocks
    gelu_calls, cat_calls = _counted(monkeypatch, "gelu_quant"), _counted(monkeypatch, "cat_gelu_quant")
    fused = latents()
    assert psnr_db(unfused, fused) > 35.0
    calls_per_step = 2 if family == "wan" else 1  # Wan runs its CFG halves as two calls
    assert len(gelu_calls) == feed_forwards * 3 * calls_per_step
    assert len(cat_calls) == single_blocks * 3 * calls_per_step
    assert unfuse_mlps(pipe.transformer) == feed_forwards + single_blocks
    assert torch.equal(latents(), unfused)


def test_layers_that_need_more_than_a_row_scale_stay_unfused():
    """Rotation (the W8A8 recipe) or no quantization at all: nothing changes."""
    pipe, _ = _quantized("flux", "w8a8")
    assert fuse_mlps(pipe.transformer) == 0
    assert fuse_mlps(tiny_flux_pipeline().transformer) == 0


def test_quant_linear_forward_can_leave_its_activation_to_the_consumer():
    """``QuantLinear.forward(x, activation=False)``: the same GEMM without the GELU that
    ``fuse_gelu_into_linears`` moved into the layer."""
    pipe, _ = _quantized("flux")
    ff = pipe.transformer.transformer_blocks[0].ff
    proj = ff.net[0].proj
    assert proj.output_activation == "gelu_tanh"
    x = torch.randn(6, proj.in_features).bfloat16()
    with torch.inference_mode():
        plain, activated = proj(x, activation=False), proj(x)
    torch.testing.assert_close(activated, torch.nn.functional.gelu(plain.float(), approximate="tanh")
                               .bfloat16(), rtol=2e-2, atol=2e-2)
