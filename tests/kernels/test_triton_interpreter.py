"""The single-pass rotate+quantize Triton kernel, run by Triton's CPU interpreter.

CI has no GPU; tests/conftest.py sets ``TRITON_INTERPRET=1`` there, so the kernel's own
code (masks, the whole-row layout, the CFG pairs, the butterflies) runs on numpy and is
checked against the pure-torch oracle. The GPU tests (tests/kernels/test_kernels_gpu.py)
check the compiled kernel, e4m3 output and the autotuned dispatch. e4m3 is left out
here: the interpreter's float8 cast does not round to nearest even as the GPU does.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or os.environ.get("TRITON_INTERPRET") != "1"
    or torch.cuda.is_available(),
    reason="needs triton and TRITON_INTERPRET=1 on a machine without a GPU",
)


def _x(m: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 2 + torch.rand(m, 1, generator=g) * 6
    x[:, 3] *= 50  # outlier channel
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("block_m", [1, 4])
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("smooth", [False, True])
# K = 1152 and 4608 (PixArt) split into two unpadded register tiles, 512 is one tile,
# 896 = 512 + 384 pads its second tile to 512
@pytest.mark.parametrize(
    "m,k,block", [(6, 1152, 128), (7, 96, 32), (2, 4608, 128), (3, 512, 128), (4, 896, 128)]
)
def test_single_pass_kernel_matches_reference(m, k, block, smooth, delta, center, block_m):
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference, rotate_quant_triton

    if delta and m % 2:
        m -= 1
    x = _x(m, k, seed=m * k + block_m)
    half = m // 2 if delta else 0
    clip = torch.cat([torch.full((m // 2,), 0.9), torch.full((m - m // 2,), 0.8)])
    kw = {
        "block": block,
        "smooth": torch.rand(k) + 0.5 if smooth else None,
        "clip_ratio": clip,
        "out_dtype": torch.int8,
        "delta_half": half,
    }
    mean_ref = torch.empty(m) if center else None
    mean = torch.full((m,), 7.0) if center else None
    q_ref, s_ref = rotate_quant_reference(x, center_out=mean_ref, **kw)
    q, s = rotate_quant_triton(
        x, center_out=mean, single_pass=True, block_m=block_m, num_warps=1, **kw
    )
    if center:
        torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    # butterfly vs matmul summation order: rare off-by-one codes at rounding ties
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1 and int(diff.sum()) <= max(2, diff.numel() // 1000)


def test_single_pass_kernel_refuses_what_it_cannot_hold():
    from trdq.kernels.triton_rotate_quant import rotate_quant_triton

    x = _x(2, 1152, seed=0)
    with pytest.raises(ValueError, match="single-pass"):
        rotate_quant_triton(x, block=128, row_scale=torch.ones(2), single_pass=True)
    with pytest.raises(ValueError, match="single-pass"):
        rotate_quant_triton(_x(2, 16384, seed=1), block=128, single_pass=True)


def test_row_tiles_split_k_into_powers_of_two():
    from trdq.kernels.triton_rotate_quant import _row_tiles

    assert _row_tiles(1152, 128) == (1024, 128)
    assert _row_tiles(4608, 128) == (4096, 512)
    assert _row_tiles(512, 128) == (512, 0)
    assert _row_tiles(896, 128) == (512, 512)
    assert _row_tiles(96, 32) == (64, 32)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("m,k,block", [(6, 1152, 128), (8, 96, 32)])
def test_single_pass_kernel_interleaves_cfg_pairs(m, k, block, center):
    """``interleave_pairs``: uncond row r and its cond difference land at rows 2r, 2r + 1
    (codes, scales and means), the order the paired GEMM reads."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference, rotate_quant_triton

    x = _x(m, k, seed=m + k)
    kw = {"block": block, "clip_ratio": 0.9, "out_dtype": torch.int8, "delta_half": m // 2}
    mean_ref = torch.empty(m) if center else None
    mean = torch.empty(m) if center else None
    q_ref, s_ref = rotate_quant_reference(x, center_out=mean_ref, **kw)
    q, s = rotate_quant_triton(
        x, center_out=mean, interleave_pairs=True, block_m=2, num_warps=1, **kw
    )
    q_ref2, s_ref2 = rotate_quant_reference(
        x, center_out=torch.empty(m) if center else None, interleave_pairs=True, **kw
    )
    order = torch.tensor([i // 2 + (i % 2) * (m // 2) for i in range(m)])
    assert torch.equal(q_ref2, q_ref[order]) and torch.equal(s_ref2, s_ref[order])
    torch.testing.assert_close(s, s_ref[order], rtol=1e-5, atol=0)
    assert int((q.int() - q_ref[order].int()).abs().max()) <= 1
    if center:
        torch.testing.assert_close(mean, mean_ref[order], rtol=1e-5, atol=1e-5)
