"""CPU tests of the pure-torch math behind the fused rotate+quantize kernel (run in CI)."""

from __future__ import annotations

import pytest
import torch

from trdq import primitives as P
from trdq.kernels import ops
from trdq.kernels.base import ActQuant, restore_cfg_delta
from trdq.kernels.reference import fake_quant_activation
from trdq.kernels.triton_rotate_quant import (
    block_hadamard_reference,
    rotate_quant_reference,
    sylvester_hadamard,
)
from trdq.kernels.triton_w4a8 import pack_int4_tiled, unpack_int4_tiled
from trdq.quant_transforms import prepare_activation
from trdq.rotation import block_hadamard_matrix, fwht, hadamard_block_size


@pytest.mark.parametrize("k", [96, 256, 1152])
def test_block_hadamard_matches_dense_and_fwht(k):
    x = torch.randn(7, k, dtype=torch.float64).float()
    b = hadamard_block_size(k)
    dense = x @ block_hadamard_matrix(k, b)
    torch.testing.assert_close(block_hadamard_reference(x, b), dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fwht(x, b), dense, atol=1e-5, rtol=1e-5)


def test_sylvester_entries():
    h = sylvester_hadamard(16)
    i = torch.arange(16)
    popcount = torch.tensor([int(v).bit_count() for v in (i[:, None] & i[None, :]).flatten()])
    torch.testing.assert_close(h.flatten(), (-1.0) ** popcount.float())


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("smooth", [False, True])
def test_reference_equals_backend_fake_quant(fp8, static, smooth):
    torch.manual_seed(0)
    m, k = 9, 1152
    x = (torch.randn(m, k) * 2).to(torch.bfloat16)
    x[:, 5] *= 40  # an outlier channel
    act = ActQuant(
        rotation_block=128,
        smooth_divisor=torch.rand(k) + 0.5 if smooth else None,
        row_scale=torch.rand(m) * 0.05 + 0.01 if static else None,
        clip_ratio=0.9,
        fp8=fp8,
    )
    dtype = torch.float8_e4m3fn if fp8 else torch.int8
    q, scale = rotate_quant_reference(
        x,
        rotation_block=128,
        smooth=act.smooth_divisor,
        row_scale=act.row_scale,
        clip_ratio=act.clip_ratio,
        out_dtype=dtype,
    )
    assert q.dtype == dtype and scale.shape == (m,)
    expected = fake_quant_activation(prepare_activation(x, act), act)
    got = q.float() * scale[:, None]
    # the oracle may rotate by a GEMM instead of the butterfly: float32 summation order
    # can flip a rounding tie, never more than one quantization step
    # (and moves the dynamic absmax, hence the scale, by an ulp)
    steps = (got - expected).abs() / scale[:, None]
    assert steps.max() <= 1.0 + 1e-3
    assert (steps > 1e-3).float().mean() < 1e-3


def test_dynamic_zero_row_does_not_divide_by_zero():
    x = torch.zeros(2, 256, dtype=torch.bfloat16)
    q, scale = rotate_quant_reference(x, rotation_block=128, out_dtype=torch.int8)
    assert torch.all(q == 0) and torch.all(scale > 0)


def test_ops_cpu_path_matches_reference_backend():
    """The custom ops run their reference path on CPU; same numbers as the oracle."""
    from trdq.kernels.reference import ReferenceBackend

    torch.manual_seed(1)
    m, k, n = 6, 256, 64
    x = torch.randn(m, k, dtype=torch.bfloat16)
    w = torch.randn(n, k)
    bias = torch.randn(n, dtype=torch.bfloat16)
    qw, ws = P.quantize_weight_per_channel(fwht(w, 128), 8, fp8=True)
    act = ActQuant(rotation_block=128, fp8=True, clip_ratio=1.0)
    ref = ReferenceBackend().linear(x, {"weight": qw, "weight_scale": ws}, act, bias)
    out = ops.fp8_linear(x, qw, ws, bias, rotation_block=128,
                         clip_ratio=act.row_clip(x.shape[0], x.device))
    assert P.sqnr_db(ref.float(), out.float()) > 40

    qw4, ws4 = P.quantize_weight_per_channel(fwht(w, 128), 4)
    act8 = ActQuant(rotation_block=128, clip_ratio=1.0)
    ref4 = ReferenceBackend().linear(
        x, {"weight": P.pack_int4(qw4), "weight_scale": ws4}, act8, bias
    )
    clip = act8.row_clip(x.shape[0], x.device)
    out4 = ops.lowbit_linear(x, pack_int4_tiled(qw4), ws4, bias, rotation_block=128,
                             clip_ratio=clip)
    assert P.sqnr_db(ref4.float(), out4.float()) > 40


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("smooth", [False, True])
def test_unrotated_fp8_linear_matches_the_reference_backend(static, smooth):
    """``fp8_linear_unrotated`` (torch ops for the compiler to fuse) serves what the
    reference backend does for an fp8 layer without rotation."""
    from trdq.kernels.reference import ReferenceBackend

    torch.manual_seed(2)
    m, k, n = 8, 192, 48
    x = torch.randn(m, k, dtype=torch.bfloat16) * 3
    x[:, 5] *= 40  # an outlier channel: e4m3's exponent has to hold it
    w, bias = torch.randn(n, k), torch.randn(n, dtype=torch.bfloat16)
    divisor = torch.rand(k) + 0.5 if smooth else None
    w_eff = w * divisor[None, :] if smooth else w
    qw, ws = P.quantize_weight_per_channel(w_eff, 8, fp8=True)
    xs = x.float() / divisor if smooth else x.float()
    row_scale = P.dynamic_row_scale(xs, 8, 0.9, fp8=True) if static else None
    act = ActQuant(smooth_divisor=divisor, row_scale=row_scale, clip_ratio=0.9, fp8=True)
    ref = ReferenceBackend().linear(x, {"weight": qw, "weight_scale": ws}, act, bias)
    out = ops.fp8_linear_unrotated(
        x, qw, ws, bias, smooth=divisor, row_scale=row_scale,
        clip_ratio=act.row_clip(m, x.device),
    )
    assert out.dtype == x.dtype
    assert P.sqnr_db(ref.float(), out.float()) > 40
    exact = x.float() @ w.t() + bias.float()
    assert P.sqnr_db(exact, out.float()) > 20


@pytest.mark.parametrize("fp8", [False, True])
def test_reference_centring_writes_the_row_means(fp8):
    torch.manual_seed(4)
    x = (torch.randn(9, 256) + torch.rand(9, 1) * 5).to(torch.bfloat16)
    dtype = torch.float8_e4m3fn if fp8 else torch.int8
    mean = torch.empty(9)
    q, scale = rotate_quant_reference(x, rotation_block=128, out_dtype=dtype, center_out=mean)
    torch.testing.assert_close(mean, x.float().mean(dim=-1))
    q0, scale0 = rotate_quant_reference(x.float() - mean[:, None], rotation_block=128,
                                        out_dtype=dtype)
    torch.testing.assert_close(scale, scale0)
    assert torch.equal(q.float(), q0.float())
    with pytest.raises(ValueError, match="dynamic"):
        rotate_quant_reference(x, rotation_block=128, row_scale=scale, center_out=mean)


def test_ops_add_the_mean_back_through_the_weight_sums():
    """``weight_sum`` given, both ops centre and restore: a token that is all mean has
    nothing left to quantize, so the output is bias + mean x weight_sum exactly."""
    torch.manual_seed(5)
    k, n = 256, 64
    w = torch.randn(n, k)
    bias = torch.randn(n)
    x = torch.full((3, k), 1.5).to(torch.bfloat16)
    clip = torch.ones(3)
    expected = (x.float() @ w.t() + bias).float()
    weight_sum = w.sum(dim=1)
    qw, ws = P.quantize_weight_per_channel(fwht(w, 128), 8, fp8=True)
    out = ops.fp8_linear(x, qw, ws, bias, rotation_block=128, clip_ratio=clip,
                         weight_sum=weight_sum)
    assert P.sqnr_db(expected, out.float()) > 40
    qw4, ws4 = P.quantize_weight_per_channel(fwht(w, 128), 4)
    out4 = ops.lowbit_linear(
        x, pack_int4_tiled(qw4), ws4, bias, rotation_block=128, clip_ratio=clip,
        weight_sum=weight_sum,
    )
    assert P.sqnr_db(expected, out4.float()) > 40


def _cfg_pair(half: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 rows [uncond; cond] with cond = uncond + a little, and the explicit float32
    difference [uncond; cond - uncond] that CFG-delta quantizes."""
    x_u = torch.randn(half, k) * 3 + torch.rand(half, 1) * 4
    x = torch.cat([x_u, x_u + 0.2 * torch.randn(half, k)]).to(torch.bfloat16)
    xf = x.float()
    return x, torch.cat([xf[:half], xf[half:] - xf[:half]])


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("center", [False, True])
def test_reference_cfg_delta_equals_the_differenced_input(fp8, center):
    torch.manual_seed(6)
    x, differenced = _cfg_pair(5, 256)
    dtype = torch.float8_e4m3fn if fp8 else torch.int8
    smooth = torch.rand(256) + 0.5
    kw = {"rotation_block": 128, "smooth": smooth, "clip_ratio": 0.9, "out_dtype": dtype}
    mean, mean0 = (torch.empty(10), torch.empty(10)) if center else (None, None)
    q, scale = rotate_quant_reference(x, center_out=mean, delta_half=5, **kw)
    q0, scale0 = rotate_quant_reference(differenced, center_out=mean0, **kw)
    assert torch.equal(scale, scale0) and torch.equal(q.float(), q0.float())
    if center:  # the means are those of the differenced rows
        assert torch.equal(mean, mean0)
    # a float32 input is not differenced in place (x.float() returns x itself)
    xf = x.float()
    rotate_quant_reference(xf, delta_half=5, **kw)
    assert torch.equal(xf, x.float())


def test_cfg_delta_needs_dynamic_scales_and_two_halves():
    x = torch.randn(6, 256)
    with pytest.raises(ValueError, match="dynamic"):
        rotate_quant_reference(x, rotation_block=128, row_scale=torch.ones(6), delta_half=3)
    with pytest.raises(ValueError, match="half"):
        rotate_quant_reference(x, rotation_block=128, delta_half=2)


def test_ops_cfg_delta_match_the_explicit_difference():
    """The custom ops' reference path (what runs on CPU) with ``delta_half`` gives the
    same integers / outputs as the ops on the explicitly differenced rows."""
    torch.manual_seed(7)
    k, n = 256, 64
    x, differenced = _cfg_pair(4, k)
    w, bias = torch.randn(n, k), torch.randn(n)
    clip = torch.full((8,), 0.9)
    for fp8 in (False, True):
        q, scale = ops.rotate_quant(x, rotation_block=128, clip_ratio=clip, fp8=fp8,
                                    delta_half=4)
        q0, scale0 = ops.rotate_quant(differenced, rotation_block=128, clip_ratio=clip,
                                      fp8=fp8)
        assert torch.equal(scale, scale0) and torch.equal(q.float(), q0.float())
    # with centring on too: the ops difference first, then centre (as QuantLinear does)
    weight_sum = w.sum(dim=1)
    qw, ws = P.quantize_weight_per_channel(fwht(w, 128), 8, fp8=True)
    kw = {"rotation_block": 128, "clip_ratio": clip, "weight_sum": weight_sum}
    out = ops.fp8_linear(x, qw, ws, bias, delta_half=4, **kw)
    out0 = ops.fp8_linear(differenced, qw, ws, bias, **kw)
    assert torch.equal(out, out0.to(out.dtype))
    qw4, ws4 = P.quantize_weight_per_channel(fwht(w, 128), 4)
    args = (pack_int4_tiled(qw4), ws4, bias)
    # lowbit_linear returns the cond rows as served: y_u + W d (the bias once)
    out4 = ops.lowbit_linear(x, *args, delta_half=4, **kw)
    y = ops.lowbit_linear(differenced, *args, **kw).to(out4.dtype)
    assert torch.equal(out4, restore_cfg_delta(y, 4, bias))


def test_fake_impls_trace_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 256, dtype=torch.bfloat16)
        w = torch.empty(64, 256, dtype=torch.float8_e4m3fn)
        ws = torch.empty(64)
        clip = torch.empty(5)
        out = ops.fp8_linear(x, w, ws, None, rotation_block=128, clip_ratio=clip)
        assert out.shape == (5, 64) and out.dtype == torch.bfloat16
        q, s = ops.rotate_quant(x, rotation_block=128, clip_ratio=clip)
        assert q.dtype == torch.int8 and s.shape == (5,)
        wp = torch.empty(64, 128, dtype=torch.uint8)
        kw = {"rotation_block": 128, "clip_ratio": clip}
        assert ops.lowbit_linear(x, wp, ws, None, **kw).shape == (5, 64)
        out = ops.lowbit_linear(x, wp, ws, None, weight_sum=ws, **kw)
        assert out.shape == (5, 64)
        assert ops.fp8_linear(x, w, ws, None, weight_sum=ws, **kw).shape == (5, 64)
        x2 = torch.empty(6, 256, dtype=torch.bfloat16)  # CFG-delta: two halves of 3 rows
        clip2 = torch.empty(6)
        kw2 = {"rotation_block": 128, "clip_ratio": clip2, "delta_half": 3}
        assert ops.rotate_quant(x2, fp8=True, **kw2)[0].shape == (6, 256)
        assert ops.fp8_linear(x2, w, ws, None, **kw2).shape == (6, 64)
        out = ops.lowbit_linear(x2, wp, ws, None, weight_sum=ws, **kw2)
        assert out.shape == (6, 64)


def test_custom_ops_compile_without_graph_break():
    torch._dynamo.reset()
    w = torch.randn(64, 256)
    qw, ws = P.quantize_weight_per_channel(fwht(w, 128), 8, fp8=True)

    def f(x):
        clip = torch.ones(x.shape[0])
        out = ops.fp8_linear(x, qw, ws, None, rotation_block=128, clip_ratio=clip)
        return torch.nn.functional.gelu(out)

    explanation = torch._dynamo.explain(f)(torch.randn(4, 256, dtype=torch.bfloat16))
    assert explanation.graph_break_count == 0


def test_backends_import_and_report_unavailable_without_cuda():
    from trdq.kernels.cuda_fp8 import CudaFp8Backend
    from trdq.kernels.cuda_w4a8 import CudaW4A8Backend

    for backend in (CudaFp8Backend(), CudaW4A8Backend()):
        ok, reason = backend.is_available("cpu")
        assert not ok and reason


def test_tiled_int4_layout_round_trip():
    q = torch.randint(-8, 8, (5, 256), dtype=torch.int8)
    packed = pack_int4_tiled(q)
    assert packed.shape == (5, 128) and packed.dtype == torch.uint8
    torch.testing.assert_close(unpack_int4_tiled(packed), q)
    # byte j of a tile: k = j in the low nibble, k = j + 64 in the high nibble
    low = (packed[:, 3] & 0xF).to(torch.int16)
    assert torch.equal(torch.where(low >= 8, low - 16, low).to(torch.int8), q[:, 3])


def test_paired_gemm_oracle_is_the_restored_unpaired_one():
    """``w4a8_matmul_reference(paired=True)`` on interleaved rows equals the plain GEMM on
    the [uncond; cond-difference] halves followed by the restore."""
    from trdq.kernels.triton_rotate_quant import interleaved_pair_order
    from trdq.kernels.triton_w4a8 import w4a8_matmul_reference

    gen = torch.Generator().manual_seed(3)
    m, k, n = 10, 128, 24
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    sa, sw, bias = torch.rand(m, generator=gen), torch.rand(n, generator=gen), torch.randn(n)
    center, wsum = torch.randn(m, generator=gen), torch.randn(n, generator=gen)
    kw = {"out_dtype": torch.float64, "center": center, "weight_sum": wsum}
    plain = restore_cfg_delta(w4a8_matmul_reference(a, sa, w, sw, bias, **kw), m // 2, bias)
    order = interleaved_pair_order(m // 2)
    kw["center"] = center[order]
    paired = w4a8_matmul_reference(a[order], sa[order], w, sw, bias, paired=True, **kw)
    torch.testing.assert_close(paired, plain)
    with pytest.raises(ValueError, match="even"):
        w4a8_matmul_reference(a[:3], sa[:3], w, sw, paired=True)
