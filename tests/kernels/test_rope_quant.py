"""FLUX's fused attention prologue (trdq.kernels.triton_rope_quant): its oracle against
diffusers' own RMSNorm and rotary embedding followed by the static e4m3 cast, on CPU, and
the operator's checks. The Triton kernel against the oracle: tests/kernels/test_triton_interpreter.py
(CPU) and tests/kernels/test_norm_quant_gpu.py (CUDA)."""

from __future__ import annotations

import pytest
import torch

from trdq.kernels import fa3_attention as fa3
from trdq.kernels import triton_rope_quant as rq


def flux_inputs(batch=2, text=5, image=11, heads=3, dim=16, seed=0):
    """Two streams' fused projections (strided rows), norm weights, FLUX-style rotary
    tables (interleaved pairs) and per-(tensor, batch, head) statistics."""
    g = torch.Generator().manual_seed(seed)
    width = 3 * heads * dim
    text_qkv = (torch.randn(batch, text, width + 4, generator=g) * 2)[..., 4:]
    image_qkv = torch.randn(batch, image, width, generator=g) * 2
    weights = torch.rand(4, dim, generator=g) + 0.5
    angles = torch.rand(text + image, dim // 2, generator=g) * 6
    cos = angles.cos().repeat_interleave(2, -1)
    sin = angles.sin().repeat_interleave(2, -1)
    scale = torch.rand(3, batch, heads, generator=g) * 0.02 + 0.005
    mean = torch.randn(3, batch, heads, dim, generator=g) * 0.1
    mean[0] = 0  # Q is not smoothed
    return text_qkv, image_qkv, weights, cos, sin, scale, mean, heads


def test_reference_is_diffusers_norm_and_rotation_then_the_static_cast():
    """In float32 (no bf16 roundings between the steps): diffusers' RMSNorm per stream,
    [text; image], apply_rotary_emb, then fa3_attention's codes for each operand."""
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.normalization import RMSNorm

    text_qkv, image_qkv, weights, cos, sin, scale, mean, heads = flux_inputs()
    dim = weights.shape[1]
    got = rq.norm_rope_e4m3_reference(text_qkv, image_qkv, weights, cos, sin, scale, mean,
                                      heads, 1e-6, out_dtype=torch.float32)

    def norm(x, w):
        layer = RMSNorm(dim, eps=1e-6)
        layer.weight.data.copy_(w)
        return layer(x)

    (tq, tk, tv), (iq, ik, iv) = (t.unflatten(-1, (3, heads, dim)).unbind(2)
                                  for t in (text_qkv, image_qkv))
    q = apply_rotary_emb(torch.cat([norm(tq, weights[0]), norm(iq, weights[2])], 1), (cos, sin),
                         sequence_dim=1)
    k = apply_rotary_emb(torch.cat([norm(tk, weights[1]), norm(ik, weights[3])], 1), (cos, sin),
                         sequence_dim=1)
    v = torch.cat([tv, iv], 1)
    for t, x in enumerate((q, k, v)):
        expected = fa3.e4m3_codes(x, scale[t], mean[t, :, None], torch.float32)
        torch.testing.assert_close(got[t], expected, rtol=1e-5, atol=1e-4)


def test_single_stream_is_an_empty_text_stream():
    text_qkv, image_qkv, weights, cos, sin, scale, mean, heads = flux_inputs(text=0)
    codes = rq.norm_rope_e4m3(text_qkv, image_qkv, weights, cos, sin, scale, mean, heads, 1e-6)
    assert codes.shape == (3, 2, 11, 3, 16) and codes.dtype == torch.float8_e4m3fn


def test_operator_checks_its_shapes():
    text_qkv, image_qkv, weights, cos, sin, scale, mean, heads = flux_inputs()
    with pytest.raises(ValueError, match="cos and sin"):
        rq.norm_rope_e4m3(text_qkv, image_qkv, weights, cos[1:], sin[1:], scale, mean, heads, 1e-6)
    with pytest.raises(ValueError, match="norm_weights"):
        rq.norm_rope_e4m3(text_qkv, image_qkv, weights[:2], cos, sin, scale, mean, heads, 1e-6)
    with pytest.raises(ValueError, match="head dim 12"):
        rq.norm_rope_e4m3(text_qkv[..., :108], image_qkv[..., :108], weights, cos, sin, scale,
                          mean, heads, 1e-6)
    assert rq.supported_head_dim(128) and not rq.supported_head_dim(72)
