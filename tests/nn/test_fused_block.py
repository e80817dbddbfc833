"""The fused feed-forward entry of PixArt/Latte blocks (trdq.nn.fused_block) against
diffusers' own forward on the same quantized layers, and its kernel's oracle
(trdq.kernels.triton_norm_quant) against the unfused arithmetic, on CPU.

The two paths quantize the same values except for rounding: diffusers rounds the
LayerNorm output and the modulate to bf16 where the fused op stays in float32 and
multiplies by the reciprocal scale, so a few e4m3 codes land one step apart. The bounds
say "the same computation", far above what a wrong row, sample or scale would give.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import fast, run_image, run_video
from trdq import api
from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.kernels import triton_norm_quant as nq
from trdq.nn import fused_block, fused_mlp
from trdq.nn.fused_block import fuse_block_norms, unfuse_block_norms
from trdq.primitives import psnr_db
from trdq.testing.tiny import TINY_PROMPTS, tiny_latte_pipeline, tiny_pixart_pipeline


def _inputs(batch=2, tokens=5, dim=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, tokens, dim, generator=g) * 3).bfloat16()
    branch = torch.randn(batch, tokens, dim, generator=g).bfloat16()
    gate = torch.randn(batch, 1, dim, generator=g).bfloat16()
    shift = (torch.randn(batch, 1, dim, generator=g) * 0.1).bfloat16()
    scale = (torch.randn(batch, 1, dim, generator=g) * 0.1).bfloat16()
    inverse = torch.rand(batch * tokens, generator=g) * 40 + 10
    return x, branch, gate, shift, scale, inverse


def test_reference_is_the_unfused_arithmetic():
    """Residual add, LayerNorm, per-sample modulate, per-row scale, e4m3: as the block
    and QuantLinear compute them one op at a time (in float32)."""
    x, branch, gate, shift, scale, inverse = _inputs()
    residual, codes = nq.add_norm_modulate_quant_reference(x, branch, gate, shift, scale,
                                                           inverse, 1e-6)
    h = (x.float() + gate.float() * branch.float()).bfloat16()
    assert torch.equal(residual, h)
    y = torch.nn.functional.layer_norm(h.float(), (96,), eps=1e-6) * (1 + scale.float()) + shift.float()
    expected = torch.clamp(y.reshape(10, 96) / (1 / inverse[:, None]), -448, 448)
    got = codes.float()
    assert codes.dtype == torch.float8_e4m3fn
    # e4m3 keeps 3 mantissa bits: within half a step (1/16 relative) of the exact value
    assert ((got - expected).abs() <= expected.abs() / 16 + 2**-9).all()


def test_operator_checks_shapes_and_runs_the_reference_on_cpu():
    x, branch, gate, shift, scale, inverse = _inputs()
    residual, codes = nq.add_norm_modulate_quant(x, branch, gate, shift, scale, inverse, 1e-6)
    ref = nq.add_norm_modulate_quant_reference(x, branch, gate, shift, scale, inverse, 1e-6)
    assert torch.equal(residual, ref[0]) and torch.equal(codes.float(), ref[1].float())
    with pytest.raises(ValueError, match="one value per row"):
        nq.add_norm_modulate_quant(x, branch, gate, shift, scale, inverse[:-1], 1e-6)
    with pytest.raises(ValueError, match="gate needs a branch"):
        nq.add_norm_modulate_quant(x, None, gate, shift, scale, inverse, 1e-6)


def _quantized(pipe_factory, preset="fp8-norot", fuse_qkv=False):
    pipe = pipe_factory()
    if fuse_qkv:
        assert fuse_qkv_projections(pipe.transformer) > 0
    api.quantize(pipe, fast(preset), progress=False, calibration_prompts=TINY_PROMPTS)
    return pipe


@pytest.mark.parametrize("family,fuse_qkv,gelu", [
    ("pixart", False, False), ("pixart", True, False), ("pixart", True, True),
    ("latte", False, False), ("latte", False, True), ("latte", True, True),
])
def test_fused_blocks_match_diffusers_forward(family, fuse_qkv, gelu, monkeypatch):
    """PixArt (cross-attention before the feed-forward) and Latte (its temporal blocks have
    none: the gated self-attention output is the branch) give the same samples fused and
    unfused, and unfusing restores diffusers' forward exactly. With one quantized
    ``to_qkv`` the self-attention's entry is fused too (one kernel call more per block)."""
    factory, run = ((tiny_pixart_pipeline, run_image) if family == "pixart"
                    else (tiny_latte_pipeline, run_video))
    pipe = _quantized(factory, fuse_qkv=fuse_qkv)
    unfused = run(pipe, TINY_PROMPTS[:2], steps=3)
    blocks = fuse_block_norms(pipe.transformer, gelu=gelu)
    assert blocks == sum(1 for _ in _basic_blocks(pipe.transformer)) > 0
    calls, gelu_calls = [], []
    real, real_gelu = fused_block.add_norm_modulate_quant, fused_mlp.gelu_quant
    monkeypatch.setattr(fused_block, "add_norm_modulate_quant",
                        lambda *a: (calls.append(a[1] is None), real(*a))[1])
    monkeypatch.setattr(fused_mlp, "gelu_quant",  # the feed-forward on codes calls it
                        lambda *a: (gelu_calls.append(1), real_gelu(*a))[1])
    fused = run(pipe, TINY_PROMPTS[:2], steps=3)
    assert psnr_db(unfused, fused) > 35.0
    # per block and step (3, both CFG halves in one call): the feed-forward's entry, and
    # the self-attention's where its projections are one quantized to_qkv
    assert calls.count(False) == blocks * 3
    assert calls.count(True) == (blocks * 3 if fuse_qkv else 0)
    assert len(gelu_calls) == (blocks * 3 if gelu else 0)
    assert unfuse_block_norms(pipe.transformer) == blocks
    assert torch.equal(run(pipe, TINY_PROMPTS[:2], steps=3), unfused)


def _basic_blocks(transformer):
    from diffusers.models.attention import BasicTransformerBlock

    return (m for m in transformer.modules() if isinstance(m, BasicTransformerBlock))


def test_blocks_whose_layers_need_more_than_a_row_scale_stay_unfused():
    """Rotation (the W8A8 recipe) or integer codes: the producer cannot quantize for the
    layer, so nothing changes."""
    pipe = _quantized(tiny_pixart_pipeline, "w8a8")
    assert fuse_block_norms(pipe.transformer) == 0
    assert fuse_block_norms(tiny_pixart_pipeline().transformer) == 0  # not quantized
