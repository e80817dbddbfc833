"""Backends: registry selection and cpu_int8 against the reference oracle (SQNR)."""

from __future__ import annotations

import pytest
import torch

from trdq import primitives as P
from trdq.config import QuantConfig
from trdq.kernels import (
    ActQuant,
    BackendUnavailableError,
    cpu_int8,
    cpu_native,
    get_backend,
    select_backend,
    switches,
)
from trdq.kernels.base import serve_linear
from trdq.rotation import hadamard_block_size, rotate_weight


def test_auto_selects_cpu_int8_on_cpu():
    assert select_backend("auto", "cpu", QuantConfig.preset("w8a8")).name == "cpu_int8"
    assert select_backend("auto", "cpu", QuantConfig.preset("w4a8")).name == "cpu_int8"
    # fp8 and faithful fall back to the oracle on CPU
    assert select_backend("auto", "cpu", QuantConfig.preset("fp8")).name == "reference"
    assert select_backend("auto", "cpu", QuantConfig.preset("faithful")).name == "reference"


def test_named_unavailable_backend_says_what_is_missing():
    with pytest.raises(BackendUnavailableError, match="cpu_int8.*fp8"):
        select_backend("cpu_int8", "cpu", QuantConfig.preset("fp8"))
    with pytest.raises(BackendUnavailableError, match="unknown kernel backend"):
        select_backend("no_such_backend", "cpu", None)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError):
            select_backend("cpu_int8", "cuda", QuantConfig.preset("w8a8"))


def _case(m: int, k: int, n: int, bits: int, smooth: bool):
    gen = torch.Generator().manual_seed(m * 7 + k + bits)
    x = torch.randn(m, k, generator=gen)
    x[:, :3] *= 25.0
    w = torch.randn(n, k, generator=gen) * 0.05
    bias = torch.randn(n, generator=gen)
    s = (torch.rand(k, generator=gen) + 0.5) if smooth else None
    block = hadamard_block_size(k)
    wr = rotate_weight(w * s[None, :] if smooth else w, block)
    q, scale = P.quantize_weight_per_channel(wr, bits)
    return x, w, bias, s, block, q, scale


@pytest.mark.parametrize("bits,act_bits", [(8, 8), (8, 7), (4, 8), (6, 6), (4, 4)])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("m,k,n,smooth", [(1, 64, 32, False), (33, 1152, 96, True),
                                          (200, 256, 128, False)])
def test_cpu_int8_matches_reference(bits, act_bits, mode, m, k, n, smooth):
    x, w, bias, s, block, q, scale = _case(m, k, n, bits, smooth)
    row_scale = torch.linspace(0.05, 0.2, m) * 127 / P.qmax_for(act_bits) if mode == "static" else None
    act = ActQuant(bits=act_bits, rotation_block=block, smooth_divisor=s, row_scale=row_scale,
                   clip_ratio=0.9)
    ref, fast = get_backend("reference"), get_backend("cpu_int8")
    y_ref = ref.linear(x, ref.pack(q, scale, bits), act, bias)
    y_fast = fast.linear(x, fast.pack(q, scale, bits), act, bias)
    assert P.sqnr_db(y_ref, y_fast) > 60  # same integers: only fp32 rounding differs
    # and the quantized result approximates the float layer
    if mode == "dynamic":
        bound = {(8, 8): 25, (8, 7): 22, (4, 8): 12, (6, 6): 18, (4, 4): 6}[(bits, act_bits)]
        assert P.sqnr_db(x @ w.T + bias, y_fast) > bound


def test_lower_activation_widths_really_use_fewer_levels(monkeypatch):
    """W4A4 through cpu_int8: the activations that reach the int8 GEMM hold at most 15 levels."""
    seen = {}

    def spy_on(name):  # the torch-ops path calls int8_matmul, the C path int8_gemm
        real = getattr(cpu_int8, name)

        def spy(a, b, *rest):
            seen.setdefault("a", a)
            return real(a, b, *rest)

        monkeypatch.setattr(cpu_int8, name, spy)

    spy_on("int8_matmul")
    spy_on("int8_gemm")
    x, _, bias, _, block, q, scale = _case(40, 256, 64, 4, False)
    fast = get_backend("cpu_int8")
    act = ActQuant(bits=4, rotation_block=block, clip_ratio=1.0)
    fast.linear(x, fast.pack(q, scale, 4), act, bias)
    assert seen["a"].dtype == torch.int8
    assert int(seen["a"].abs().max()) == 7
    assert fast.supports(QuantConfig.preset("w4a4"))[0]


@pytest.mark.parametrize("fast_int_mm", [True, False])
def test_both_int8_gemm_paths_are_exact(monkeypatch, fast_int_mm):
    """torch._int_mm (VNNI/AMX CPUs) and the fp32 GEMM of the integers (other CPUs) both
    give the exact int32 product, at full scale (every product +-127^2) for K = 1024."""
    monkeypatch.setattr(cpu_int8, "FAST_INT_MM", fast_int_mm)
    gen = torch.Generator().manual_seed(3)
    sign = lambda *shape: torch.randint(0, 2, shape, generator=gen, dtype=torch.int32) * 2 - 1
    a = (sign(24, 1024) * 127).to(torch.int8)
    b = (sign(40, 1024) * 127).to(torch.int8)
    a[0], b[0] = 127, 127  # one all-positive sum: 1024 x 127^2 = 16.5M < 2^24
    exact = a.to(torch.int64) @ b.to(torch.int64).t()
    got = cpu_int8.int8_matmul(a, b)
    assert got.dtype == torch.float32
    assert torch.equal(got.to(torch.int64), exact)


@pytest.mark.skipif(not hasattr(torch.ops.onednn, "qlinear_prepack"), reason="no oneDNN int8 linear")
def test_onednn_prepacked_gemm_is_exact_and_follows_weight_writes(monkeypatch):
    """The VNNI/AMX path: oneDNN's int8 linear on a prepacked copy gives the exact integer
    product, and a weight written in place is packed again (its version changed). Weights
    within +-63 so the product is exact on AVX2 CPUs too, where oneDNN's u8 x s8 pairs
    saturate int16 (CI's machine; the path itself only runs where FAST_INT_MM holds)."""
    monkeypatch.setattr(cpu_int8, "ONEDNN_PREPACK", True)
    gen = torch.Generator().manual_seed(11)
    q = torch.randint(-127, 128, (48, 256), dtype=torch.int8, generator=gen)
    w = torch.randint(-63, 64, (80, 256), dtype=torch.int8, generator=gen)
    exact = lambda: (q.to(torch.int64) @ w.to(torch.int64).t()).float()
    assert torch.equal(cpu_int8.int8_gemm(q, w), exact())
    w.neg_()  # in place: same storage, new version
    assert torch.equal(cpu_int8.int8_gemm(q, w), exact())
    assert torch.equal(cpu_int8.int8_gemm(q[:5], w), exact()[:5])  # other M, same pack
    with torch.inference_mode():  # inference tensors keep no version counter
        w_inf = w.clone()
    assert torch.equal(cpu_int8.int8_gemm(q, w_inf), exact())


@pytest.mark.skipif(not hasattr(torch.ops.onednn, "qlinear_prepack"), reason="no oneDNN int8 linear")
def test_u8_gemm_of_7_bit_activations_is_exact_with_full_range_weights(monkeypatch):
    """The AVX2 path of ``w8a7``: activations of 7 bits shifted to unsigned bytes, weights
    over the whole int8 range, every product at full scale. Exact on CPUs whose u8 x s8
    pairs saturate int16 (CI's AVX2 machine), where 8-bit activations are not."""
    monkeypatch.setattr(cpu_int8, "ONEDNN_PREPACK", False)
    monkeypatch.setattr(cpu_int8, "U8_GEMM", True)
    gen = torch.Generator().manual_seed(5)
    sign = lambda *shape: torch.randint(0, 2, shape, generator=gen, dtype=torch.int32) * 2 - 1
    q = (sign(24, 1024) * 63).to(torch.int8)
    w = (sign(40, 1024) * 127).to(torch.int8)
    w[1] = -128  # the most negative weight too
    q[0], w[0] = 63, 127  # one all-positive sum
    q[1] = torch.randint(-63, 64, (1024,), generator=gen, dtype=torch.int8)
    exact = (q.to(torch.int64) @ w.to(torch.int64).t()).float()
    assert torch.equal(cpu_int8.int8_gemm(q, w, 7), exact)
    assert torch.equal(cpu_int8.int8_gemm(q[:3], w, 7), exact[:3])  # other M, same pack
    assert torch.equal(cpu_int8.int8_gemm(q, w, 8), exact)  # 8 bits: the fp32 GEMM


def test_w8a7_runs_the_u8_gemm_where_it_applies(monkeypatch):
    """``w8a7`` through cpu_int8's C path reaches the GEMM with 7-bit activations (and
    through the u8 kernel where ``U8_GEMM`` holds); ``w8a8`` does not take it."""
    if not cpu_native.available():
        pytest.skip("the C kernels did not build")
    seen = []
    real = cpu_int8.int8_gemm

    def spy(q, w, bits=8):
        seen.append((int(q.abs().max()), bits))
        return real(q, w, bits)

    monkeypatch.setattr(cpu_int8, "int8_gemm", spy)
    x, _, bias, s, block, q, scale = _case(33, 1152, 96, 8, True)
    fast = get_backend("cpu_int8")
    for act_bits in (7, 8):
        act = ActQuant(bits=act_bits, rotation_block=block, smooth_divisor=s, clip_ratio=1.0)
        fast.linear(x, fast.pack(q, scale, 8), act, bias)
    assert seen == [(63, 7), (127, 8)]
    assert fast.supports(QuantConfig.preset("w8a7"))[0]


def test_cpu_int8_matches_reference_on_either_gemm_path(monkeypatch):
    x, _, bias, s, block, q, scale = _case(33, 1152, 96, 8, True)
    act = ActQuant(rotation_block=block, smooth_divisor=s, clip_ratio=0.9)
    fast = get_backend("cpu_int8")
    packed = fast.pack(q, scale, 8)
    outs = []
    for flag in (True, False):
        monkeypatch.setattr(cpu_int8, "FAST_INT_MM", flag)
        outs.append(fast.linear(x, packed, act, bias))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["static", "dynamic", "centred", "centred-delta"])
@pytest.mark.parametrize("bits", [8, 4])
def test_native_cpu_kernels_match_the_torch_math(dtype, mode, bits):
    """The C pass (delta, centring, smoothing, rotation, scale, rounding) and epilogue give
    the torch-ops path's result: the same integers up to rare rounding ties."""
    if not cpu_native.available():
        pytest.skip("no C compiler here: cpu_int8 runs its torch ops")
    x, _, bias, s, block, q, scale = _case(40, 1152, 96, bits, True)
    x = x.to(dtype)
    w = P.pack_int4(q) if bits == 4 else q
    centred = mode.startswith("centred")
    args = (x, w, scale, bias)
    kw = {"rotation_block": block, "smooth": s,
          "row_scale": torch.linspace(0.05, 0.2, 40) if mode == "static" else None,
          "clip_ratio": torch.full((40,), 0.9), "bits": 8,
          "weight_sum": torch.randn(96) if centred else None,
          "delta_half": 20 if mode == "centred-delta" else 0}
    want = cpu_int8.int8_linear_math(*args, **kw)
    got = cpu_int8.native_int8_linear(*args, **kw)
    assert got.dtype == dtype and got.shape == want.shape
    assert P.sqnr_db(want.float(), got.float()) > 60


def test_native_activation_codes_match_the_rotate_quant_oracle():
    """Integers and scales of the C pass against the Triton kernel's pure-torch oracle
    (``rotate_quant_reference``), with CFG-delta and centring on."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference

    if not cpu_native.available():
        pytest.skip("no C compiler here: cpu_int8 runs its torch ops")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 768, generator=gen) * 3
    smooth = torch.rand(768, generator=gen) + 0.5
    clip = torch.full((64,), 0.95)
    mean_ref = torch.empty(64)
    q_ref, s_ref = rotate_quant_reference(x, rotation_block=128, smooth=smooth, clip_ratio=clip,
                                          out_dtype=torch.int8, center_out=mean_ref,
                                          delta_half=32)
    q, s, mean = cpu_native.cpu_rotate_quant(x, rotation_block=128, smooth=smooth,
                                                 clip_ratio=clip, bits=8, center=True,
                                                 delta_half=32)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    differ = (q.int() - q_ref.int()).abs()
    assert int(differ.max()) <= 1 and float((differ > 0).float().mean()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("k", "block"), [
    (40, None),  # no rotation; K not a multiple of 8 or 32: the scalar tails
    (100, 4),  # blocks smaller than 8: scalar butterflies only
    (96, 8), (96, 16),  # the in-register H_8 alone, then one 8-wide stage
    (96, 32), (192, 64), (768, 256), (512, 512),  # two-stage (radix-4) passes, + one
])
def test_native_rotate_quant_matches_the_oracle_for_every_block(dtype, k, block):
    """Each code path of the C rotation (H_8 in a register, radix-4 and radix-2 stages, the
    scalar tails) gives the oracle's codes and scales."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference

    if not cpu_native.available():
        pytest.skip("no C compiler here: cpu_int8 runs its torch ops")
    gen = torch.Generator().manual_seed(k + (block or 0))
    x = (torch.randn(24, k, generator=gen) * 2 + 0.3).to(dtype)
    smooth = torch.rand(k, generator=gen) + 0.5
    clip = torch.full((24,), 0.9)
    mean_ref = torch.empty(24)
    q_ref, s_ref = rotate_quant_reference(x, rotation_block=block, smooth=smooth, clip_ratio=clip,
                                          out_dtype=torch.int8, center_out=mean_ref,
                                          delta_half=12)
    q, s, mean = cpu_native.cpu_rotate_quant(x, rotation_block=block or 0, smooth=smooth,
                                                 clip_ratio=clip, bits=8, center=True,
                                                 delta_half=12)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    differ = (q.int() - q_ref.int()).abs()
    assert int(differ.max()) <= 1 and float((differ > 0).float().mean()) < 2e-3


def _check_gelu_epilogue():
    """The C epilogue's GELU against torch's, over the whole range (tails clamped), with
    CFG-delta (the cond rows get the uncond rows added before GELU) and a row length that
    leaves a scalar tail after the 8-wide loop."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(9)
    m, n = 24, 37
    acc = torch.randint(-3000, 3000, (m, n), dtype=torch.int32, generator=gen)
    a_s, w_s, bias = torch.rand(m) * 0.01, torch.rand(n), torch.randn(n)
    acc[0, :5] = torch.tensor([10**6, -10**6, 0, 1, -1])  # far tails: x and 0
    for delta_half in (0, m // 2):
        plain = cpu_native.cpu_int8_epilogue(acc, a_s, w_s, bias, None, None, torch.float32,
                                             delta_half)
        got = cpu_native.cpu_int8_epilogue(acc, a_s, w_s, bias, None, None, torch.float32,
                                           delta_half, "gelu_tanh")
        torch.testing.assert_close(got, F.gelu(plain, approximate="tanh"), rtol=1e-5, atol=1e-6)


def test_native_epilogue_applies_gelu():
    if not cpu_native.available():
        pytest.skip("no C compiler here: cpu_int8 runs its torch ops")
    _check_gelu_epilogue()
    with pytest.raises(ValueError, match="epilogue activation"):
        cpu_native.int8_epilogue(torch.zeros(2, 2, dtype=torch.int32), torch.ones(2),
                                 torch.ones(2), None, None, None, torch.float32, 0, "relu")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_int8_serves_gelu_from_its_epilogue(monkeypatch, native):
    """QuantLinear hands GELU to cpu_int8 (``fused_activations``): the C epilogue applies it,
    and the torch path when the C kernels are off, both as torch's GELU of the plain output."""
    import torch.nn.functional as F

    if native and not cpu_native.available():
        pytest.skip("no C compiler here")
    if not native:
        monkeypatch.setattr(cpu_native, "available", lambda: False)
    x, _, bias, s, block, q, scale = _case(34, 1152, 96, 8, True)
    fast = get_backend("cpu_int8")
    assert "gelu_tanh" in fast.fused_activations
    act = ActQuant(rotation_block=block, smooth_divisor=s, clip_ratio=0.9,
                   weight_sum=torch.randn(96), cfg_delta_half=17)
    packed = fast.pack(q, scale, 8)
    plain = fast.linear(x, packed, act, bias)
    fused = fast.linear(x, packed, act, bias, activation="gelu_tanh")
    torch.testing.assert_close(fused, F.gelu(plain, approximate="tanh"), rtol=1e-5, atol=1e-5)


def test_native_portable_build_matches_the_oracle(monkeypatch, tmp_path):
    """The plain-C branches (CPUs without AVX2): the source built for baseline x86-64 gives
    the oracle's codes, with and without a rotation, and the same epilogue."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference

    if not cpu_native.available():
        pytest.skip("no C compiler here: cpu_int8 runs its torch ops")
    flags = tuple("-march=x86-64" if f == "-march=native" else f for f in cpu_native.FLAGS)
    monkeypatch.setattr(cpu_native, "FLAGS", flags)
    cpu_native._library.cache_clear()
    try:
        with switches.using(native_cache_dir=tmp_path):
            assert cpu_native._library() is not None
            gen = torch.Generator().manual_seed(5)
            for k, block in ((96, 32), (40, None), (100, 4)):
                x = torch.randn(24, k, generator=gen) * 2
                clip = torch.full((24,), 0.9)
                mean_ref = torch.empty(24)
                q_ref, s_ref = rotate_quant_reference(x, rotation_block=block, clip_ratio=clip,
                                                      out_dtype=torch.int8, center_out=mean_ref,
                                                      delta_half=12)
                q, s, _ = cpu_native.cpu_rotate_quant(
                    x, rotation_block=block or 0, clip_ratio=clip, bits=8, center=True,
                    delta_half=12)
                torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
                assert int((q.int() - q_ref.int()).abs().max()) <= 1
            acc = torch.randint(-999, 999, (24, 16), dtype=torch.int32, generator=gen)
            a_s, w_s, bias = torch.rand(24), torch.rand(16), torch.randn(16)
            got = cpu_native.cpu_int8_epilogue(acc, a_s, w_s, bias, None, None, torch.float32)
            torch.testing.assert_close(got, acc.float() * a_s[:, None] * w_s + bias)
            _check_gelu_epilogue()  # the scalar GELU (libm's expf)
    finally:
        monkeypatch.undo()
        cpu_native._library.cache_clear()
    assert list(tmp_path.glob("*.so")), "the portable build went to the test's cache"


def test_cpu_int8_falls_back_to_torch_ops_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(cpu_native, "_cache_dir", lambda: tmp_path)
    with pytest.raises(OSError):
        cpu_native._build()
    monkeypatch.setattr(cpu_native, "available", lambda: False)
    x, _, bias, _, block, q, scale = _case(8, 64, 32, 8, False)
    fast = get_backend("cpu_int8")
    act = ActQuant(rotation_block=block, clip_ratio=0.9)
    y = fast.linear(x, fast.pack(q, scale, 8), act, bias)
    ref = get_backend("reference")
    assert P.sqnr_db(ref.linear(x, ref.pack(q, scale, 8), act, bias), y) > 60


def test_int4_weights_are_really_packed():
    _, _, _, _, _, q, scale = _case(4, 64, 32, 4, False)
    packed = get_backend("cpu_int8").pack(q, scale, 4)
    assert packed["weight"].dtype == torch.uint8 and packed["weight"].shape == (32, 32)


@pytest.mark.slow
def test_cpu_int8_compiles_without_graph_breaks():
    x, _, bias, _, block, q, scale = _case(16, 64, 32, 8, False)
    fast = get_backend("cpu_int8")
    packed = fast.pack(q, scale, 8)
    act = ActQuant(rotation_block=block)
    compiled = torch.compile(lambda t: fast.linear(t, packed, act, bias), fullgraph=True)
    torch.testing.assert_close(compiled(x), fast.linear(x, packed, act, bias))


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_int8_low_rank_branch_in_its_epilogue(native, dtype, monkeypatch):
    """The low-rank error branch inside cpu_int8 (the C epilogue, or int8_linear_math's
    torch ops) gives what ``serve_linear`` builds around a backend that does not fuse it:
    the branch on the served rows (the cond rows' x, not their CFG difference), then GELU."""
    if native and not cpu_native.available():
        pytest.skip("no C compiler here: cpu_int8 runs its torch ops")
    monkeypatch.setattr(cpu_native, "_enabled", native)
    x, _, bias, s, block, q, scale = _case(40, 1152, 96, 4, True)
    x = x.to(dtype)
    gen = torch.Generator().manual_seed(5)
    down = (torch.randn(16, 1152, generator=gen) * 0.02).to(dtype)
    up = (torch.randn(96, 16, generator=gen) * 0.5).to(dtype)
    act = ActQuant(bits=8, rotation_block=block, smooth_divisor=s, clip_ratio=0.9,
                   weight_sum=torch.randn(96, generator=gen), cfg_delta_half=20)
    fused = get_backend("cpu_int8")
    packed = fused.pack(q, scale, 4)
    got = serve_linear(fused, x, packed, act, bias, "gelu_tanh", (down, up))
    monkeypatch.setattr(type(fused), "fuses_low_rank", False)
    want = serve_linear(fused, x, packed, act, bias, "gelu_tanh", (down, up))
    without = serve_linear(fused, x, packed, act, bias, "gelu_tanh")
    assert got.dtype == dtype and got.shape == want.shape
    assert P.sqnr_db(want.float(), got.float()) > (45 if dtype == torch.bfloat16 else 60)
    # and the branch is there: without it the output is measurably different
    assert P.sqnr_db(want.float(), without.float()) < 40


def test_native_unpack_int4_matches_the_primitive():
    """The C unpack of 4-bit weights against ``trdq.primitives.unpack_int4``, every byte."""
    if not cpu_native.available():
        pytest.skip("no C compiler here: cpu_int8 runs its torch ops")
    every = torch.arange(256, dtype=torch.uint8).repeat(37, 3)
    assert torch.equal(cpu_native.unpack_int4(every), P.unpack_int4(every))


def test_the_small_kernels_microbenchmark_asks_for_a_gpu(capsys):
    """``python -m trdq.kernels.microbench_small`` times CUDA kernels: without a GPU it
    says so and exits 2 (its shapes run on the GPU machine)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the microbenchmark would run")
    from trdq.kernels import microbench_small

    assert microbench_small.main([]) == 2
    assert "needs CUDA" in capsys.readouterr().err
