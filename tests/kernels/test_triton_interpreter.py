"""The Triton kernels, run by Triton's CPU interpreter: both rotate+quantize kernels and
the low-bit GEMM, against their pure-torch oracles.

CI has no GPU; tests/conftest.py sets ``TRITON_INTERPRET=1`` there, so the kernels' own
code (masks, the whole-row layout, the CFG pairs, the butterflies, the GEMM's tiles and
epilogues) runs on numpy. The GPU tests (tests/kernels/test_kernels_gpu.py) check the
compiled kernels, e4m3 output and the autotuned dispatch. e4m3 is left out here: the
interpreter's float8 cast does not round to nearest even as the GPU does.
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


@pytest.fixture(autouse=True)
def _interpreter_loop_bounds(monkeypatch):
    """Triton 3.6's interpreter turns a scalar kernel argument used as a loop bound into
    an index with ``int()`` of a one-element array, which NumPy 2 refuses; take the
    element instead (test-only: the compiled kernels never see this)."""
    import numpy as np
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(
            tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0])
        )

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patched)


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
        "rotation_block": block,
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


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("m,block_m,tiles", [(7, 1, 4), (10, 2, 2), (3, 1, 4)])
def test_single_pass_kernel_takes_several_tiles_per_program(m, block_m, tiles, delta):
    """TILES consecutive row tiles per program (the smoothing vector loaded once for them),
    including a last program whose tiles run past the rows."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference, rotate_quant_triton

    if delta and m % 2:
        m += 1
    k = 1152
    x = _x(m, k, seed=m * tiles)
    kw = {"rotation_block": 128, "smooth": torch.rand(k) + 0.5, "clip_ratio": 0.9,
          "out_dtype": torch.int8, "delta_half": m // 2 if delta else 0}
    mean_ref, mean = torch.empty(m), torch.full((m,), 7.0)
    q_ref, s_ref = rotate_quant_reference(x, center_out=mean_ref, **kw)
    q, s = rotate_quant_triton(x, center_out=mean, single_pass=True, block_m=block_m,
                               num_warps=1, tiles_per_program=tiles, **kw)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1 and int(diff.sum()) <= max(2, diff.numel() // 1000)


def test_single_pass_kernel_refuses_what_it_cannot_hold():
    from trdq.kernels.triton_rotate_quant import rotate_quant_triton

    x = _x(2, 1152, seed=0)
    with pytest.raises(ValueError, match="single-pass"):
        rotate_quant_triton(x, rotation_block=128, row_scale=torch.ones(2), single_pass=True)
    with pytest.raises(ValueError, match="single-pass"):
        rotate_quant_triton(_x(2, 16512, seed=1), rotation_block=128, single_pass=True)


@pytest.mark.parametrize("k", [8960, 15360])  # Wan-1.3B's and FLUX's widest linear inputs
def test_single_pass_kernel_holds_rows_wider_than_its_default(k):
    """Asked for, the single pass takes rows up to SINGLE_PASS_LIMIT_K padded columns
    (8960 = 8192 + 768 pads its second tile to 1024); by default such rows stay tiled."""
    from trdq.kernels import triton_rotate_quant as rq

    assert not rq.single_pass_applies(k, 128)
    assert rq.single_pass_applies(k, 128, limit=rq.SINGLE_PASS_LIMIT_K)
    x = _x(2, k, seed=k)
    kw = {"rotation_block": 128, "smooth": torch.rand(k) + 0.5, "clip_ratio": 0.9,
          "out_dtype": torch.int8}
    mean_ref, mean = torch.empty(2), torch.full((2,), 7.0)
    q_ref, s_ref = rq.rotate_quant_reference(x, center_out=mean_ref, **kw)
    q, s = rq.rotate_quant_triton(x, center_out=mean, single_pass=True, block_m=1,
                                  num_warps=4, **kw)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1 and int(diff.sum()) <= max(2, diff.numel() // 1000)


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
    kw = {"rotation_block": block, "clip_ratio": 0.9, "out_dtype": torch.int8, "delta_half": m // 2}
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


# (static, center, delta): centring and CFG-delta are dynamic-mode only
@pytest.mark.parametrize(
    "static,center,delta",
    [(True, False, False), (False, False, False), (False, True, False), (False, False, True),
     (False, True, True)],
)
def test_tiled_kernel_matches_reference(static, center, delta):
    """The tiled kernel (static scales, and what the single-pass kernel does not hold)."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference, rotate_quant_triton

    m, k = 6, 256
    x = _x(m, k, seed=11)
    kw = {
        "rotation_block": 128,
        "smooth": torch.rand(k) + 0.5,
        "row_scale": torch.rand(m) * 0.05 + 0.01 if static else None,
        "clip_ratio": 0.9,
        "out_dtype": torch.int8,
        "delta_half": m // 2 if delta else 0,
    }
    mean_ref = torch.empty(m) if center else None
    mean = torch.empty(m) if center else None
    q_ref, s_ref = rotate_quant_reference(x, center_out=mean_ref, **kw)
    q, s = rotate_quant_triton(
        x, center_out=mean, single_pass=False, block_m=4, num_warps=1, **kw
    )
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    assert int((q.int() - q_ref.int()).abs().max()) <= 1
    if center:
        torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-5)


def _gemm_cases():
    """(tile, packed, tma) for every autotuned tile; packed int4 weights only with 128-wide
    k tiles, as the autotuner prunes, and TMA loads only for int8 weights. (None without
    triton: the module is skipped.)"""
    if importlib.util.find_spec("triton") is None:
        return []
    from trdq.kernels.triton_w4a8 import _CONFIGS, PACK_TILE

    cases = []
    for c in _CONFIGS:
        tile = {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
        name = "{BM}x{BN}x{BK}w{num_warps}".format(**tile)
        cases.append(pytest.param(tile, False, False, id=name))
        cases.append(pytest.param(tile, False, True, id=name + "-tma"))
        if tile["BK"] == PACK_TILE:
            cases.append(pytest.param(tile, True, False, id=name + "-packed"))
    return cases


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("config,packed,tma", _gemm_cases())
def test_lowbit_gemm_tiles_match_reference(config, packed, tma, paired):
    """Every autotuned tile of the int8 / packed-int4 GEMM, with the served epilogue
    (scales, bias, centring term) and the paired CFG rows, against the float64 oracle;
    int8 weights also through TMA descriptors (edge tiles zero-filled)."""
    from trdq.kernels.triton_w4a8 import (
        pack_int4_tiled,
        w4a8_matmul_reference,
        w4a8_matmul_triton,
    )

    gen = torch.Generator().manual_seed(config["BM"] + config["BN"] + config["BK"])
    m, k, n = 34, 256, 160  # partial tiles in M and N
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-7, 8, (n, k), dtype=torch.int8, generator=gen)
    b = pack_int4_tiled(w) if packed else w
    sa, sw = torch.rand(m, generator=gen) * 1e-3, torch.rand(n, generator=gen) * 1e-2
    bias, center, wsum = torch.randn(n), torch.randn(m), torch.randn(n)
    kw = {"out_dtype": torch.float32, "center": center, "weight_sum": wsum, "paired": paired}
    ref = w4a8_matmul_reference(a, sa, b, sw, bias, **kw)
    out = w4a8_matmul_triton(a, sa, b, sw, bias, config=config, tma=tma, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_lowbit_gemm_refuses_tma_for_packed_weights():
    from trdq.kernels.triton_w4a8 import pack_int4_tiled, w4a8_matmul_triton

    a = torch.ones(4, 128, dtype=torch.int8)
    b = pack_int4_tiled(torch.ones(8, 128, dtype=torch.int8))
    with pytest.raises(ValueError, match="TMA"):
        w4a8_matmul_triton(a, torch.ones(4), b, torch.ones(8), tma=True)


@pytest.mark.parametrize("paired", [False, True])
def test_lowbit_gemm_epilogue_gelu_matches_reference(paired):
    """GELU (tanh) in the epilogue, after the bias and the CFG pairing, against the
    oracle's float64 GELU; outputs span GELU's curved range and both saturations."""
    from trdq.kernels.triton_w4a8 import _CONFIGS, w4a8_matmul_reference, w4a8_matmul_triton

    c = _CONFIGS[0]
    tile = {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
    gen = torch.Generator().manual_seed(7)
    m, k, n = 34, 256, 160
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    sa, sw = torch.rand(m, generator=gen) * 1e-2, torch.rand(n, generator=gen) * 1e-2
    bias = torch.randn(n, generator=gen)
    kw = {"out_dtype": torch.float32, "paired": paired, "activation": "gelu_tanh"}
    ref = w4a8_matmul_reference(a, sa, w, sw, bias, **kw)
    assert ref.min() < -0.1 and ref.max() > 10 and (ref.abs() < 1e-4).any()
    out = w4a8_matmul_triton(a, sa, w, sw, bias, config=tile, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_autotuner_prunes_keep_only_tiles_that_apply():
    from trdq.kernels import triton_rotate_quant_rows as rq
    from trdq.kernels import triton_w4a8 as w4

    packed = w4._packed_needs_full_tiles(w4._CONFIGS, {}, PACKED=True)
    assert packed and all(c.kwargs["BK"] == w4.PACK_TILE for c in packed)
    assert w4._packed_needs_full_tiles(w4._CONFIGS, {}, PACKED=False) == w4._CONFIGS
    configs = rq._rotate_quant_rows_autotuned.configs
    wide = rq._fits_in_registers(configs, {}, KA=4096, KB=512)  # K = 4608
    assert wide and all(c.kwargs["BLOCK_M"] * 4608 <= 128 * 32 * c.num_warps for c in wide)
    assert len(rq._fits_in_registers(configs, {}, KA=1024, KB=128)) == len(configs)
    # a CFG pair holds two rows: twice the values of a tile without CFG-delta
    single = rq._fits_in_registers(configs, {}, KA=8192, KB=0, DELTA=False)
    paired = rq._fits_in_registers(configs, {}, KA=8192, KB=0, DELTA=True)
    assert paired and all(c.kwargs["BLOCK_M"] * 2 * 8192 <= 128 * 32 * c.num_warps
                          for c in paired)
    assert len(paired) < len(single)


def _first_pick_then_direct(monkeypatch, tuner, launch):
    """Launch twice through ``launch_triton``: the first launch tunes (a stand-in timer:
    the interpreter has no GPU clock; every tile ties, the first is picked), the second
    must not enter the autotuner. Returns both results."""
    from trdq.kernels import launch as base

    monkeypatch.setattr(base, "_CHOSEN_CONFIGS", {})
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(tuner, "do_bench", lambda fn, quantiles: [1.0, 1.0, 1.0])
    first = launch()
    assert [key[0] for key in base._CHOSEN_CONFIGS] == [id(tuner)]

    def no_autotuner(*args, **kwargs):
        raise AssertionError("the autotuner ran again for a key it had tuned")

    monkeypatch.setattr(tuner, "run", no_autotuner)
    return first, launch()


def test_autotuned_quantizer_runs_its_pick_directly_after_tuning(monkeypatch):
    from trdq.kernels import triton_rotate_quant as rq

    x = _x(6, 1152, seed=3)
    kw = {"rotation_block": 128, "clip_ratio": 0.9, "out_dtype": torch.int8, "delta_half": 3,
          "smooth": torch.rand(1152) + 0.5}
    q_ref, s_ref = rq.rotate_quant_reference(x, **kw)
    first, again = _first_pick_then_direct(
        monkeypatch, rq._rotate_quant_rows_autotuned, lambda: rq.rotate_quant_triton(x, **kw)
    )
    for q, s in (first, again):
        torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
        assert int((q.int() - q_ref.int()).abs().max()) <= 1


def test_autotuned_gemm_runs_its_pick_and_pre_hook_directly_after_tuning(monkeypatch):
    """The direct launch runs the pick's pre-hook: here it sizes the TMA boxes, which a
    fresh pair of descriptors gets at every call (without it the launch fails)."""
    from trdq.kernels import triton_w4a8 as w4

    gen = torch.Generator().manual_seed(5)
    a = torch.randint(-127, 128, (34, 256), dtype=torch.int8, generator=gen)
    w = torch.randint(-127, 128, (160, 256), dtype=torch.int8, generator=gen)
    sa, sw = torch.rand(34, generator=gen) * 1e-3, torch.rand(160, generator=gen) * 1e-2
    kw = {"out_dtype": torch.float32, "paired": True}
    ref = w4.w4a8_matmul_reference(a, sa, w, sw, **kw)
    first, again = _first_pick_then_direct(
        monkeypatch, w4._lowbit_gemm_autotuned,
        lambda: w4.w4a8_matmul_triton(a, sa, w, sw, tma=True, **kw),
    )
    torch.testing.assert_close(first, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows_faster", [True, False])
def test_wide_rows_take_the_kernel_timed_faster_once_per_shape(monkeypatch, rows_faster):
    """Rows between the default crossover and the single pass's limit: both kernels are
    timed once per shape (a stand-in timer here; the interpreter has no GPU clock), the
    faster serves that call and every later one, and either gives the oracle's codes."""
    from trdq.kernels import launch as base
    from trdq.kernels import triton_rotate_quant as rq

    monkeypatch.setattr(base, "_CHOSEN_CONFIGS", {})
    for tuner in (rq._rotate_quant_autotuned, rq._rotate_quant_rows_autotuned):
        monkeypatch.setattr(tuner, "cache", {})
        monkeypatch.setattr(tuner, "do_bench", lambda fn, quantiles: [1.0, 1.0, 1.0])
    monkeypatch.setattr(rq, "_WIDE_ROWS_CHOICE", {})
    monkeypatch.setattr(rq, "_can_time", lambda x: True)
    timings = [1.0, 2.0] if rows_faster else [2.0, 1.0]  # rows first, then tiled
    timed = []

    def fake_time(launch):
        launch()
        timed.append(timings[len(timed)])
        return timed[-1]

    monkeypatch.setattr(rq, "_time_ms", fake_time)
    served = []
    for name in ("_launch_rows_kernel", "_launch_tiled_kernel"):
        real = getattr(rq, name)
        monkeypatch.setattr(rq, name, lambda *a, _real=real, _name=name, **kw: (
            served.append(_name), _real(*a, **kw))[1])
    k = 8960
    x = _x(2, k, seed=3)
    kw = {"rotation_block": 128, "smooth": torch.rand(k) + 0.5, "clip_ratio": 0.9,
          "out_dtype": torch.int8}
    q_ref, s_ref = rq.rotate_quant_reference(x, **kw)
    for _ in range(2):
        served.clear()
        q, s = rq.rotate_quant_triton(x, **kw)
        torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
        assert (q.int() - q_ref.int()).abs().max() <= 1
    assert len(timed) == 2  # timed on the first call only
    assert served == ["_launch_rows_kernel" if rows_faster else "_launch_tiled_kernel"]


def test_wide_rows_stay_tiled_where_nothing_can_be_timed(monkeypatch):
    from trdq.kernels import triton_rotate_quant as rq

    monkeypatch.setattr(rq, "_WIDE_ROWS_CHOICE", {})
    x = _x(2, 8960, seed=4)  # a CPU tensor: no GPU clock
    assert not rq._wide_rows_single_pass(("key",), x, lambda: None, lambda: None)
    assert rq._WIDE_ROWS_CHOICE == {}


@pytest.mark.parametrize("with_branch,with_gate", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("dim", [96, 1152])  # 1152 (PixArt/Latte) pads its row to 2048 lanes
def test_add_norm_modulate_quant_kernel_matches_reference(with_branch, with_gate, dim):
    """The fused block's kernel (trdq.nn.fused_block), values before the e4m3 cast. The
    residual may differ by one bf16 step (the interpreter's float cast), so the norm is
    checked on the kernel's own residual."""
    from trdq.kernels import triton_norm_quant as nq

    g = torch.Generator().manual_seed(dim)
    batch, tokens = 2, 3
    x = (torch.randn(batch, tokens, dim, generator=g) * 3).to(torch.bfloat16)
    branch = torch.randn(batch, tokens, dim, generator=g).to(torch.bfloat16) if with_branch else None
    # chunks of one adaLN output, as the blocks pass them: [B, 1, D] at a stride of 3 D
    table = (torch.randn(batch, 3, dim, generator=g) * 0.1).to(torch.bfloat16)
    gate, shift, scale = table.chunk(3, dim=1)
    gate = gate * 10 if with_gate else None  # a contiguous one: both layouts are read
    assert shift.stride(0) == 3 * dim and not shift.is_contiguous()
    inverse = torch.rand(batch * tokens, generator=g) * 40 + 10
    residual, values = nq.add_norm_modulate_quant_triton(
        x, branch, gate, shift, scale, inverse, 1e-6, out_dtype=torch.float32)
    ref_residual, _ = nq.add_norm_modulate_quant_reference(
        x, branch, gate, shift, scale, inverse, 1e-6, out_dtype=torch.float32)
    step = ref_residual.float().abs() * 2**-7
    assert ((residual.float() - ref_residual.float()).abs() <= step).all()
    assert residual.numel() == (x.numel() if with_branch else 0)  # x itself: not written
    _, ref_values = nq.add_norm_modulate_quant_reference(
        residual if with_branch else x, None, None, shift, scale, inverse, 1e-6,
        out_dtype=torch.float32)
    torch.testing.assert_close(values, ref_values, rtol=1e-4, atol=1e-3)


# numpy's exp overflows to inf for very negative inputs (sigmoid 0, as on the GPU) and warns
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("rows,cols", [(3, 96), (2, 4608), (5, 1030)])  # 1030: a masked slice
def test_gelu_quant_kernel_matches_reference(rows, cols):
    """The fused feed-forward's GELU + quantizer (sigmoid form) against torch's tanh GELU,
    values before the e4m3 cast."""
    from trdq.kernels import triton_gelu_quant as gq

    g = torch.Generator().manual_seed(cols)
    x = (torch.randn(rows, cols, generator=g) * 3).to(torch.bfloat16)
    inverse = torch.rand(rows, generator=g) * 40 + 10
    values = gq.gelu_quant_triton(x, inverse, out_dtype=torch.float32)
    torch.testing.assert_close(values, gq.gelu_quant_reference(x, inverse, out_dtype=torch.float32),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
# FLUX's proj_out input is [attention 3072 | mlp 12288]; 40 and 1030: masked prefix slices
@pytest.mark.parametrize("rows,prefix_cols,cols", [(2, 3072, 1030), (3, 40, 96), (2, 1030, 24)])
def test_cat_gelu_quant_kernel_matches_reference(rows, prefix_cols, cols):
    """FLUX single blocks' ``cat([attention, GELU(mlp)])`` quantizer: the prefix copied,
    the rest through GELU, both scaled by the row's reciprocal, from row-strided inputs
    (slices of wider outputs, as the attention's may be)."""
    from trdq.kernels import triton_gelu_quant as gq

    g = torch.Generator().manual_seed(prefix_cols)
    wide = (torch.randn(rows, prefix_cols + 8, generator=g) * 3).to(torch.bfloat16)
    prefix = wide[:, 8:]  # a row stride wider than the row
    x = (torch.randn(rows, cols, generator=g) * 3).to(torch.bfloat16)
    inverse = torch.rand(rows, generator=g) * 40 + 10
    values = gq.cat_gelu_quant_triton(prefix, x, inverse, out_dtype=torch.float32)
    expected = gq.cat_gelu_quant_reference(prefix, x, inverse, out_dtype=torch.float32)
    assert values.shape == (rows, prefix_cols + cols)
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-4)
    # the prefix is only scaled: exact up to float32 rounding of one product
    torch.testing.assert_close(values[:, :prefix_cols],
                               (prefix.float() * inverse[:, None]).clamp(-448, 448))


@pytest.mark.parametrize("batch,tokens,heads,dim", [
    (2, 40, 3, 72), (1, 33, 2, 64), (3, 7, 1, 16),
    (2, 37, 5, 72),  # 400 output channels: a full and a partial channel block
    (1, 9, 4, 128),  # two full channel blocks
])
def test_attention_inputs_e4m3_kernel_matches_reference(batch, tokens, heads, dim):
    """Q, K, V as chunks of one fused projection output (strided views), rows not a
    multiple of the block, head dims padded (72 -> 80) or not, output channels in one or
    more blocks."""
    from trdq.kernels import triton_attention_quant as aq

    g = torch.Generator().manual_seed(dim)
    qkv = torch.randn(batch, tokens, 3 * heads * dim, generator=g) * 3
    q, k, v = (x.view(batch, tokens, heads, dim) for x in qkv.chunk(3, dim=-1))
    scale = torch.rand(3, batch, heads, generator=g) * 0.02 + 0.005  # some values clamp
    mean = torch.randn(3, batch, heads, dim, generator=g)
    mean[0] = 0.0
    values = aq.attention_inputs_e4m3_triton(q, k, v, scale, mean, out_dtype=torch.float32)
    expected = aq.attention_inputs_e4m3_reference(q, k, v, scale, mean, out_dtype=torch.float32)
    assert values.shape == (3, batch, tokens, heads, aq.padded_head_dim(dim))
    torch.testing.assert_close(values, expected, rtol=1e-6, atol=1e-5)
    assert (values.abs() == 448.0).any()  # the clamp was exercised


@pytest.mark.parametrize("text,image", [(5, 11), (0, 20), (16, 33)])  # 0: a single-stream block
def test_norm_rope_e4m3_kernel_matches_reference(text, image):
    """FLUX's attention prologue: both streams' RMSNorm weights, the rotary pairs, the
    statistics per (tensor, batch, head), masked row blocks, strided text rows."""
    from tests.kernels.test_rope_quant import flux_inputs
    from trdq.kernels import triton_rope_quant as rq

    args = flux_inputs(text=text, image=image)
    values = rq.norm_rope_e4m3_triton(*args, 1e-6, out_dtype=torch.float32)
    expected = rq.norm_rope_e4m3_reference(*args, 1e-6, out_dtype=torch.float32)
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows,n,k,bias", [(1, 70, 1100, True), (2, 32, 512, False),
                                           (2, 5, 3, True)])
@pytest.mark.parametrize("tile", [0, 4])  # two of the tuned tiles
def test_int8_gemv_kernel_matches_reference(rows, n, k, bias, tile):
    """One or two rows, output channels and K not multiples of the blocks, with and
    without a bias; float32 rows so only the order of the sums differs."""
    from trdq.kernels import triton_gemv as tg

    block_n, block_k, warps = tg.TILES[tile]

    g = torch.Generator().manual_seed(n)
    x = torch.randn(rows, k, generator=g)
    qweight = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, generator=g) * 0.01 + 0.001
    b = torch.randn(n, generator=g) if bias else None
    got = tg.int8_gemv_triton(x, qweight, scale, b,
                              tile={"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps})
    torch.testing.assert_close(got, tg.int8_gemv_reference(x, qweight, scale, b),
                               rtol=1e-5, atol=1e-4)
