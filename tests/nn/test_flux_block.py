"""FLUX's double-stream blocks with each stream's feed-forward entry as one op
(trdq.nn.flux_block) against diffusers' forward on the same quantized layers, on CPU (the
ops' reference path; the kernels are checked against it in tests/kernels).

The tiny model runs in float32, where the fused entry and diffusers' ops quantize the
same values: the outputs agree to rounding (a swapped shift and scale of the text stream,
whose effect reaches the image only through the next blocks' attention, gives 48 dB).
"""

from __future__ import annotations

import torch

from tests.integrations.family_helpers import fast_family, latent_run
from trdq import api
from trdq.nn import flux_block
from trdq.nn.flux_block import fuse_flux_blocks, unfuse_flux_blocks
from trdq.nn.fused_mlp import fuse_mlps
from trdq.primitives import psnr_db
from trdq.testing.tiny import TINY_PROMPTS
from trdq.testing.tiny_families import tiny_flux_pipeline


def _quantized(preset: str):
    pipe = tiny_flux_pipeline()
    api.quantize(pipe, fast_family(preset), backend="reference", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    return pipe, latent_run(pipe, False)[0]


def test_fused_flux_blocks_match_diffusers_forward(monkeypatch):
    pipe, latents = _quantized("fp8-norot")
    unfused = latents()
    assert fuse_flux_blocks(pipe.transformer) == 2  # the tiny model's double-stream blocks
    assert fuse_flux_blocks(pipe.transformer) == 0  # already fused
    calls = []
    real = flux_block.add_norm_modulate_quant
    monkeypatch.setattr(flux_block, "add_norm_modulate_quant",
                        lambda *a: (calls.append(a[0].shape[1]), real(*a))[1])
    fused = latents()
    assert psnr_db(unfused, fused) > 60.0
    assert len(calls) == 2 * 2 * 3  # blocks x streams x steps
    assert len(set(calls)) == 2  # image and text rows
    fuse_mlps(pipe.transformer)  # as served: the single blocks' MLPs too
    assert psnr_db(unfused, latents()) > 60.0
    assert unfuse_flux_blocks(pipe.transformer) == 2
    from trdq.nn.fused_mlp import unfuse_mlps

    unfuse_mlps(pipe.transformer)
    assert torch.equal(latents(), unfused)


def test_blocks_without_row_scales_stay_unfused():
    """W8A8's quantizers rotate and scale per token: no producer can write their codes."""
    pipe, _ = _quantized("w8a8")
    assert fuse_flux_blocks(pipe.transformer) == 0
