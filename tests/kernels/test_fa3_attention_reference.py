"""The FP8 attention oracle (``fp8_attention_reference``) on the CPU: how close e4m3
attention gets to exact attention, and that its smoothing of K and V is exact. The FA3
kernels are checked against this oracle on a GPU (test_fa3_attention_gpu.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trdq import primitives as P
from trdq.kernels import fa3_attention as fa3


def _qkv(b, s, h, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, s, h, d, generator=g) for _ in range(3))


def _exact(q, k, v):
    return fa3.sdpa_attention(q.double(), k.double(), v.double()).float()


@pytest.mark.parametrize("shape", [(1, 256, 2, 72), (2, 130, 3, 64), (1, 96, 2, 128)])
def test_reference_is_as_close_to_exact_attention_as_e4m3_allows(shape):
    """Each e4m3 operand (Q and K together, V, P) costs ~28-32 dB on Gaussian data (3
    mantissa bits); all of them together land at ~25 dB. A bound, not a measurement."""
    q, k, v = _qkv(*shape)
    assert 22 < P.sqnr_db(_exact(q, k, v), fa3.fp8_attention_reference(q, k, v)) < 40


def test_smoothing_makes_shared_key_and_value_offsets_free():
    """A vector added to every key shifts each query's logits by a constant (softmax ignores
    it) and one added to every value shifts every output row by that vector: after the
    smoothing both inputs quantize identically, so the outputs differ by the offset alone."""
    q, k, v = _qkv(1, 200, 2, 72)
    k_offset, v_offset = 20.0 * torch.randn(72), 20.0 * torch.randn(72)
    plain = fa3.fp8_attention_reference(q, k, v)
    shifted = fa3.fp8_attention_reference(q, k + k_offset, v + v_offset)
    assert P.sqnr_db(plain + v_offset, shifted) > 60
    # without smoothing the same offsets would cost e4m3 most of its precision
    exact = _exact(q, k + k_offset, v + v_offset)
    assert P.sqnr_db(exact, shifted) > 30


def test_quantized_inputs_are_padded_to_the_fp8_alignment_with_per_head_scales():
    q, k, v = _qkv(2, 64, 3, 72)
    (q8, k8, v8), scales, v_mean = fa3.quantize_attention_inputs(q, k, v)
    for codes in (q8, k8, v8):
        assert codes.dtype == torch.float8_e4m3fn and codes.shape == (2, 64, 3, 80)
        assert torch.all(codes[..., 72:].float() == 0)
    for scale in scales:
        assert scale.shape == (2, 3) and scale.dtype == torch.float32
    assert v_mean.shape == (2, 1, 3, 72)
    # the largest magnitude of each (batch, head) maps to e4m3's largest finite value
    assert torch.allclose(q8.float().abs().amax(dim=(1, 3)), torch.full((2, 3), fa3.E4M3_MAX))


@pytest.mark.parametrize("shape", [(2, 777, 3, 72), (1, 64, 2, 128)])
def test_token_axis_statistics_equal_the_centred_tensors_own(shape):
    """The scales come from per-channel min/max/mean over tokens; they and the codes equal
    what the centred tensor itself gives (monotonic rounding), bit for bit."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(*shape, generator=g).bfloat16() for _ in range(3))
    k, v = k * 3 + 5, v - 2
    (q8, k8, v8), (qs, ks, vs), v_mean = fa3.quantize_attention_inputs(q, k, v)
    for x, codes, scale in ((q, q8, qs), (k, k8, ks), (v, v8, vs)):
        xf = x.float()
        centred = xf if x is q else xf - xf.mean(dim=1, keepdim=True)
        direct = centred.abs().amax(dim=(1, 3)) / fa3.E4M3_MAX
        assert torch.equal(scale, direct)
        pad = (-shape[-1]) % fa3.FP8_HEAD_DIM_MULTIPLE
        expected = F.pad(centred / direct[:, None, :, None], (0, pad)).to(torch.float8_e4m3fn)
        assert torch.equal(codes.view(torch.uint8), expected.view(torch.uint8))
    assert torch.equal(v_mean, v.float().mean(dim=1, keepdim=True))


def test_sdpa_attention_keeps_the_token_major_layout():
    q, k, v = _qkv(2, 33, 3, 16)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    assert torch.allclose(fa3.sdpa_attention(q, k, v), ref.transpose(1, 2))


def test_fa3_is_reported_missing_on_the_cpu():
    runs, why = fa3.fa3_status("cpu")
    assert not runs and "CUDA" in why


def test_one_launch_casts_give_the_same_codes_as_the_torch_ops():
    """Fixed statistics through ``trdq::attention_inputs_e4m3`` (its CPU kernel is the
    reference; the Triton kernel is checked against that in the interpreter tests): the
    same codes, scales and V mean as ``_to_e4m3``'s path, on strided q/k/v views."""
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(2, 50, 3 * 3 * 72, generator=g) * 4
    q, k, v = (x.view(2, 50, 3, 72) for x in qkv.chunk(3, dim=-1))
    stats = fa3.attention_input_stats(q, k, v)
    stats = stats._replace(q_amax=stats.q_amax * 0.5)  # some Q values clamp
    torch_path = fa3.quantize_attention_inputs(q, k, v, stats)
    one_launch = fa3._quantize_in_one_launch(q, k, v, stats)
    for ours, theirs in zip(one_launch[0], torch_path[0], strict=True):
        assert ours.dtype == torch.float8_e4m3fn and ours.shape == theirs.shape
        assert torch.equal(ours.float(), theirs.float())
    for ours, theirs in zip(one_launch[1], torch_path[1], strict=True):
        torch.testing.assert_close(ours, theirs)
    assert torch.equal(one_launch[2], torch_path[2])
