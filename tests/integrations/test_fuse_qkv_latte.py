"""Latte has no model-level ``fuse_qkv_projections``; trdq fuses its attention modules one
by one as PixArt's method does (one ``to_qkv`` / ``to_kv`` each, diffusers' fused SDPA
processor). The fusion concatenates weights, so the samples are those of the unfused model."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

from tests.helpers.quant import run_video
from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.testing.tiny import TINY_PROMPTS, tiny_latte_pipeline


def test_latte_modules_are_fused_and_sample_as_before():
    plain, fused = tiny_latte_pipeline(), tiny_latte_pipeline()
    modules = [m for m in fused.transformer.modules() if isinstance(m, Attention)]
    assert fuse_qkv_projections(fused.transformer) == len(modules) > 0
    for module in modules:
        assert isinstance(module.processor, FusedAttnProcessor2_0)
        if module.is_cross_attention:
            assert module.to_kv is not None and module.to_k is None and module.to_v is None
        else:
            assert module.to_qkv is not None and module.to_q is None
    # the unfused copies are dropped: the same parameter count
    assert (sum(p.numel() for p in fused.transformer.parameters())
            == sum(p.numel() for p in plain.transformer.parameters()))
    torch.testing.assert_close(run_video(fused, TINY_PROMPTS[:2], steps=2),
                               run_video(plain, TINY_PROMPTS[:2], steps=2), rtol=0, atol=1e-5)


def test_a_module_with_another_processor_leaves_the_denoiser_unfused():
    from diffusers.models.attention_processor import AttnProcessor

    pipe = tiny_latte_pipeline()
    first = next(m for m in pipe.transformer.modules() if isinstance(m, Attention))
    first.set_processor(AttnProcessor())
    assert fuse_qkv_projections(pipe.transformer) == 0
    assert not any(getattr(m, "fused_projections", False) for m in pipe.transformer.modules())
