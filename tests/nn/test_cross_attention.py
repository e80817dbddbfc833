"""The cross-attention processor (trdq.nn.cross_attention) on tiny PixArt and Latte denoisers,
on CPU: with the kernel's torch oracle in FA3's place, the denoiser's output equals diffusers'
SDPA with the key-padding bias; other denoisers and FA3-less devices are left alone."""

from __future__ import annotations

import torch

from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.kernels.cross_attention import prefix_attention_reference
from trdq.nn.cross_attention import CrossAttnKernelProcessor, install_cross_attention_kernel
from trdq.testing.tiny import tiny_latte_pipeline, tiny_pixart_pipeline


def _pixart_inputs(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    latents = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    text = torch.randn(2, 9, cfg.caption_channels, generator=g)
    mask = torch.tensor([[1] * 3 + [0] * 6, [1] * 9])  # the CFG halves' prompts, padded
    return {"hidden_states": latents, "encoder_hidden_states": text,
            "encoder_attention_mask": mask, "timestep": torch.tensor([500, 500]),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def _forward(transformer, inputs):
    with torch.inference_mode():
        return transformer(**inputs, return_dict=False)[0]


def test_pixart_with_the_oracle_kernel_matches_diffusers():
    transformer = tiny_pixart_pipeline().transformer.float()
    inputs = _pixart_inputs(transformer)
    expected = _forward(transformer, inputs)
    count = install_cross_attention_kernel(transformer, prefix_attention_reference)
    assert count == len(transformer.transformer_blocks)
    assert all(isinstance(b.attn2.processor, CrossAttnKernelProcessor)
               for b in transformer.transformer_blocks)
    got = _forward(transformer, inputs)
    assert torch.allclose(got, expected, atol=1e-4)
    # the mask matters here, so the check can fail: without it the output moves
    unmasked = dict(inputs, encoder_attention_mask=torch.ones(2, 9, dtype=torch.long))
    assert not torch.allclose(_forward(transformer, unmasked), expected, atol=1e-3)


def test_fused_kv_projection_takes_the_kernel_too():
    transformer = tiny_pixart_pipeline(seed=1).transformer.float()
    fuse_qkv_projections(transformer)
    inputs = _pixart_inputs(transformer, seed=1)
    expected = _forward(transformer, inputs)
    assert install_cross_attention_kernel(transformer, prefix_attention_reference) > 0
    assert torch.allclose(_forward(transformer, inputs), expected, atol=1e-4)


def test_latte_without_a_mask():
    pipe = tiny_latte_pipeline()
    transformer = pipe.transformer.float()
    g = torch.Generator().manual_seed(0)
    cfg = transformer.config
    inputs = {"hidden_states": torch.randn(2, cfg.in_channels, 4, 8, 8, generator=g),
              "encoder_hidden_states": torch.randn(2, 9, cfg.caption_channels, generator=g),
              "timestep": torch.tensor([500, 500]), "enable_temporal_attentions": True}
    expected = _forward(transformer, inputs)
    assert install_cross_attention_kernel(transformer, prefix_attention_reference) > 0
    assert torch.allclose(_forward(transformer, inputs), expected, atol=1e-4)


def test_nothing_installed_without_fa3_or_on_other_denoisers():
    transformer = tiny_pixart_pipeline().transformer
    assert install_cross_attention_kernel(transformer) == 0  # CPU: FA3 does not run
    assert install_cross_attention_kernel(torch.nn.Linear(2, 2), prefix_attention_reference) == 0
