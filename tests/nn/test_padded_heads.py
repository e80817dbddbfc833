"""Attention heads padded in the weights (trdq.nn.padded_heads) on the CPU: the padded
module computes the same attention in full precision, in a quantized denoiser and under
static FP8 attention (through its oracle); modules it cannot pad are left alone."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import fast, run_image
from trdq import api
from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.kernels import fa3_attention as fa3
from trdq.nn import static_attention
from trdq.nn.padded_heads import pad_attention_heads, padded_channels, padded_head_dim
from trdq.nn.quant_linear import QuantLinear
from trdq.primitives import psnr_db
from trdq.testing.tiny import TEXT_DIM, TINY_PROMPTS, tiny_pixart_pipeline, tiny_pixart_transformer

#: the tiny models' heads are 32 wide, a multiple of 16: pad them to 48 instead
MULTIPLE = 48


def test_padded_layout():
    assert padded_head_dim(72) == 80 and padded_head_dim(128) == 128
    assert padded_channels(2, 2, 3, 4).tolist() == [0, 1, 2, -1, 3, 4, 5, -1,
                                                    6, 7, 8, -1, 9, 10, 11, -1]


def _inputs(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, 4, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(2, 6, TEXT_DIM, generator=g),
            "timestep": torch.tensor([400, 400]),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def test_full_precision_denoiser_is_unchanged():
    transformer = tiny_pixart_transformer().float()
    fuse_qkv_projections(transformer)
    inputs = _inputs(transformer)
    with torch.no_grad():
        expected = transformer(**inputs, return_dict=False)[0]
        assert pad_attention_heads(transformer, MULTIPLE) == len(transformer.transformer_blocks)
        attn = transformer.transformer_blocks[0].attn1
        assert attn.to_qkv.out_features == 3 * 2 * 48 and attn.to_out[0].in_features == 96
        got = transformer(**inputs, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert pad_attention_heads(transformer, MULTIPLE) == 0  # padded already


def test_the_logit_scale_is_what_keeps_it_exact():
    """Without Q's factor the padded module would attend with the wrong temperature: the
    check above can fail."""
    from trdq.nn import padded_heads

    transformer = tiny_pixart_transformer().float()
    fuse_qkv_projections(transformer)
    inputs = _inputs(transformer, seed=1)
    with torch.no_grad():
        expected = transformer(**inputs, return_dict=False)[0]
        original = padded_heads.math.sqrt
        padded_heads.math.sqrt = lambda x: 1.0
        try:
            pad_attention_heads(transformer, MULTIPLE)
        finally:
            padded_heads.math.sqrt = original
        got = transformer(**inputs, return_dict=False)[0]
    assert not torch.allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_quantized_pixart_with_static_fp8_attention(monkeypatch):
    """The bench's order: quantize (fp8-norot), pad, record static FP8 attention. The
    padded layers keep their codes (same outputs to float rounding), and the calibrated
    attention serves images as close to the unpadded model's as two runs of it."""
    monkeypatch.setattr(static_attention, "STATIC_MIN_TOKENS", 0)
    from trdq.runtime.cuda_graphs import quant_context

    def build(pad: bool):
        pipe = tiny_pixart_pipeline()
        fuse_qkv_projections(pipe.transformer)
        api.quantize(pipe, fast("fp8-norot"), progress=False, calibration_prompts=TINY_PROMPTS)
        if pad:
            assert pad_attention_heads(pipe.transformer, MULTIPLE) == 2
            layer = pipe.transformer.transformer_blocks[0].attn1.to_qkv
            assert isinstance(layer, QuantLinear) and layer.out_features == 288
        return pipe

    plain, padded = build(False), build(True)
    before = run_image(plain, TINY_PROMPTS[:2], steps=3)
    after = run_image(padded, TINY_PROMPTS[:2], steps=3)
    assert psnr_db(before, after) > 50
    for pipe in (plain, padded):
        static_attention.calibrate_static_attention(
            pipe.transformer, lambda p=pipe: run_image(p, TINY_PROMPTS[:2], steps=3),
            quant_context(pipe.transformer), kernel=fa3.fp8_attention_reference)
    static_before = run_image(plain, TINY_PROMPTS[:2], steps=3)
    static_after = run_image(padded, TINY_PROMPTS[:2], steps=3)
    assert psnr_db(static_before, static_after) > 35
    assert psnr_db(before, static_after) > 30


def test_rotated_outputs_and_unfused_projections_are_left_alone():
    pipe = tiny_pixart_pipeline()
    assert pad_attention_heads(pipe.transformer, MULTIPLE) == 0  # q/k/v not fused
    fuse_qkv_projections(pipe.transformer)
    api.quantize(pipe, fast("w8a8"), progress=False, calibration_prompts=TINY_PROMPTS)
    out = pipe.transformer.transformer_blocks[0].attn1.to_out[0]
    assert isinstance(out, QuantLinear) and out.rotation_block
    assert pad_attention_heads(pipe.transformer, MULTIPLE) == 0


def test_fused_blocks_run_the_padded_projections(tmp_path):
    """The served order on CUDA: quantize, pad, fuse the block entries (their LayerNorm
    kernel feeds the padded ``to_qkv`` its codes)."""
    from trdq.nn.fused_block import fuse_block_norms

    pipe = tiny_pixart_pipeline(seed=2)
    fuse_qkv_projections(pipe.transformer)
    api.quantize(pipe, fast("fp8-norot"), progress=False, calibration_prompts=TINY_PROMPTS)
    assert pad_attention_heads(pipe.transformer, MULTIPLE) == 2
    state = api.get_state(pipe)
    attn = pipe.transformer.transformer_blocks[0].attn1
    assert state.layers["transformer_blocks.0.attn1.to_qkv"] is attn.to_qkv  # old ones freed
    assert state.layers["transformer_blocks.0.attn1.to_out.0"] is attn.to_out[0]
    with pytest.raises(ValueError, match="before padding"):
        api.save(pipe, tmp_path / "padded")
    unfused = run_image(pipe, TINY_PROMPTS[:2], steps=3)
    assert fuse_block_norms(pipe.transformer, gelu=True) == 2
    assert psnr_db(unfused, run_image(pipe, TINY_PROMPTS[:2], steps=3)) > 35
