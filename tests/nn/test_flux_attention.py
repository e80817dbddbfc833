"""FLUX's self-attention with its prologue fused (trdq.nn.flux_attention) against the static
FP8 attention through diffusers' processor, on the same quantized layers and statistics,
on CPU (FA3 stood in for by its oracle on the codes).

The two paths differ in roundings only: in bf16 diffusers rounds the RMSNorm and rotary
outputs before the cast, the fused kernel stays in float32 between the steps (the tiny
model runs float32: here they agree code for code). The bound, per attention module's
output, says "the same attention": swapped stream norm weights give ~1-4 dB, rotary tables
one token off ~15-18 dB (the first checked below).
"""

from __future__ import annotations

import pytest
import torch

from tests.integrations.family_helpers import fast_family, latent_run
from trdq import api
from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.kernels import fa3_attention as fa3
from trdq.nn import flux_attention, static_attention
from trdq.nn.flux_attention import FluxPrologueProcessor, fuse_flux_attention, unfuse_flux_attention
from trdq.primitives import sqnr_db
from trdq.testing.tiny import TINY_PROMPTS
from trdq.testing.tiny_families import tiny_flux_pipeline


@pytest.fixture(autouse=True)
def _every_sequence_takes_fp8(monkeypatch):
    """The tiny model's sequences are shorter than ``STATIC_MIN_TOKENS``."""
    monkeypatch.setattr(static_attention, "STATIC_MIN_TOKENS", 0)


def _attention_outputs(pipe, run) -> list[torch.Tensor]:
    """Every FLUX attention module's outputs (image stream) over one ``run()``, in order."""
    outputs: list[torch.Tensor] = []

    def keep(_module, _args, out):
        outputs.append((out[0] if isinstance(out, tuple) else out).float().clone())

    modules = [m for m in pipe.transformer.modules() if type(m).__name__ == "FluxAttention"]
    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return outputs


def _worst_sqnr(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) > 0
    return min(sqnr_db(x, y) for x, y in zip(a, b))


def _static_flux(fused_qkv: bool = True):
    pipe = tiny_flux_pipeline()
    if fused_qkv:
        assert fuse_qkv_projections(pipe.transformer) > 0
    api.quantize(pipe, fast_family("fp8-norot"), backend="reference", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    latents, call = latent_run(pipe, video=False)
    modules = api.calibrate_attention(
        pipe, TINY_PROMPTS[:2],
        kernel=lambda q, k, v, stats: fa3.fp8_attention_reference(q, k, v, stats=stats),
        call_kwargs=call)
    assert modules == 4  # two double-stream, two single-stream blocks
    return pipe, latents


def test_fused_prologue_matches_diffusers_processor(monkeypatch):
    pipe, latents = _static_flux()
    unfused = latents()
    unfused_outputs = _attention_outputs(pipe, latents)
    assert fuse_flux_attention(pipe.transformer) == 4
    calls = []
    real = flux_attention.norm_rope_e4m3
    monkeypatch.setattr(flux_attention, "norm_rope_e4m3",
                        lambda *a: (calls.append(a[0].shape[1]), real(*a))[1])
    fused_outputs = _attention_outputs(pipe, latents)
    assert _worst_sqnr(unfused_outputs, fused_outputs) > 25
    # per step: two double-stream calls with text tokens, two single-stream without
    assert len(calls) == 3 * 4 and sum(1 for t in calls if t == 0) == 3 * 2
    assert unfuse_flux_attention(pipe.transformer) == 4
    assert torch.equal(latents(), unfused)


def test_a_wrong_prologue_is_far_outside_the_bound(monkeypatch):
    """The bound above can fail: the text and image norm weights swapped."""
    pipe, latents = _static_flux()
    unfused = _attention_outputs(pipe, latents)
    fuse_flux_attention(pipe.transformer)
    real = flux_attention.norm_rope_e4m3

    def swapped(text_qkv, image_qkv, weights, *rest):
        return real(text_qkv, image_qkv, weights[[2, 3, 0, 1]] * 1.5, *rest)

    monkeypatch.setattr(flux_attention, "norm_rope_e4m3", swapped)
    assert _worst_sqnr(unfused, _attention_outputs(pipe, latents)) < 25


def test_only_fused_projections_with_static_attention_are_eligible():
    pipe, _ = _static_flux(fused_qkv=False)
    assert fuse_flux_attention(pipe.transformer) == 0
    plain = tiny_flux_pipeline()
    assert fuse_flux_attention(plain.transformer) == 0
    assert not any(isinstance(getattr(m, "processor", None), FluxPrologueProcessor)
                   for m in plain.transformer.modules())
