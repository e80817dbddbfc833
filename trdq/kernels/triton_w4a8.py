"""Triton GEMM for packed 4-bit weights x 8-bit activations (W4A8), unpacked in registers.

Notation: A ``[M, K]`` activations (int8 or e4m3, one scale per row), B ``[N, K/2]`` uint8
two's-complement nibbles with one scale per output channel ``[N]``.

Kernel layout ("tile-split", ``pack_int4_tiled``): within every 128 consecutive k, byte j
holds k = j in its low nibble and k = j + 64 in its high nibble. The GEMM then needs no
interleave: the low nibbles multiply A's first 64 columns of the tile and the high nibbles
the next 64, as two tensor-core dots. (The library's canonical layout,
``primitives.pack_int4``, pairs even/odd k; interleaving that in registers made the GEMM
much slower than FP8. The backend converts at pack time; ``unpack`` returns the canonical
integers.)

``out[m, n] = (sum_k A[m, k] * B[n, k]) * a_scale[m] * w_scale[n] + bias[n]
(+ center[m] * weight_sum[n])``

The optional rank-1 term restores what centring removed from the activations (each row's
mean, ``triton_rotate_quant``'s ``center_out``) in the fp32 epilogue, at no extra pass.

The nibbles are sign-extended with two shifts and interleaved back to ``[BN, BK]`` in
registers; the tile then goes to the tensor cores as int8 (A int8: exact int32
accumulation, the same integers as the reference backend) or as e4m3 (A e4m3: every
4-bit integer is exact in e4m3, fp32 accumulation). HBM traffic for the weights is
K/2 bytes per output channel, a quarter of bf16.

The same kernel also takes unpacked int8 weights (``B [N, K]`` int8, ``PACKED=False``),
which gives an exact W8A8 int8 GEMM on tensor cores for comparison with ``_int_mm``. On
Hopper, with int8 activations, its tiles are loaded through TMA descriptors when the
launches are recorded into a CUDA graph (``tma``, the ``gemm_tma`` switch, ``TRDQ_GEMM_TMA``): less GPU time, more
host time per launch; packed weights keep per-thread loads.
``w4a8_matmul_reference`` is the pure-torch oracle.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from trdq.kernels import switches
from trdq.kernels.base import apply_output_activation, check_output_activation
from trdq.kernels.launch import autotune_gpu_time, launch_triton, launches_recorded, next_pow2
from trdq.primitives import pack_int4, unpack_int4

__all__ = [
    "PACK_TILE",
    "TRITON_AVAILABLE",
    "pack_int4_tiled",
    "unpack_int4_tiled",
    "w4a8_matmul_reference",
    "w4a8_matmul_triton",
]

#: k-tile of the tile-split nibble layout (the GEMM's BK for packed weights)
PACK_TILE = 128


def _tile_order(k: int, device) -> torch.Tensor:
    """Permutation p with ``canonical_pairs(q[:, p]) == tile_split(q)``: per tile of 128,
    the order k0, k0+64, k0+1, k0+65, ... so even slots take the first half."""
    if k % PACK_TILE:
        raise ValueError(f"K={k} must be a multiple of {PACK_TILE}")
    half = PACK_TILE // 2
    j = torch.arange(half, device=device)
    tile = torch.stack((j, j + half), dim=1).reshape(-1)  # [128]
    base = torch.arange(0, k, PACK_TILE, device=device)[:, None]
    return (base + tile[None, :]).reshape(-1)


def pack_int4_tiled(q: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` int8 in [-8, 7] -> ``[N, K/2]`` uint8 in the tile-split layout."""
    return pack_int4(q[:, _tile_order(q.shape[1], q.device)])


def unpack_int4_tiled(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4_tiled``: ``[N, K/2]`` uint8 -> ``[N, K]`` int8."""
    shuffled = unpack_int4(packed)
    out = torch.empty_like(shuffled)
    out[:, _tile_order(shuffled.shape[1], shuffled.device)] = shuffled
    return out


TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def w4a8_matmul_reference(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    center: torch.Tensor | None = None,
    weight_sum: torch.Tensor | None = None,
    paired: bool = False,
    activation: str = "",
) -> torch.Tensor:
    """Oracle in float64 accumulation (exact for int8 x int4 at any K we use).
    ``b`` is tile-split packed uint8 or plain int8.

    ``paired``: A's rows are CFG pairs interleaved (uncond r, cond difference r; see
    ``rotate_quant_reference(interleave_pairs=True)``) and the output is the served
    ``[uncond; cond]`` halves: ``y_u`` and ``y_u + W d`` (the bias once).

    ``activation``: ``"gelu_tanh"`` applies GELU (tanh approximation) to the served output,
    before it is rounded to ``out_dtype`` (``kernels.base.OUTPUT_ACTIVATIONS``)."""
    _check_rank1(center, weight_sum)
    check_output_activation(activation)
    w = unpack_int4_tiled(b) if b.dtype == torch.uint8 else b
    acc = a.double() @ w.double().t()
    out = acc * a_scale.double()[:, None] * w_scale.double()[None, :]
    if bias is not None:
        out = out + bias.double()
    if center is not None and weight_sum is not None:  # both or neither (_check_rank1)
        out = out + center.double()[:, None] * weight_sum.double()[None, :]
    if paired:
        _check_paired(a.shape[0])
        y_u, y_d = out[0::2], out[1::2]
        y_c = y_u + y_d - (bias.double() if bias is not None else 0.0)
        out = torch.cat((y_u, y_c))
    return apply_output_activation(out, activation).to(out_dtype)


def _check_paired(m: int) -> None:
    if m % 2:
        raise ValueError(f"paired CFG rows need an even M, got {m}")


def _check_rank1(center: torch.Tensor | None, weight_sum: torch.Tensor | None) -> None:
    if (center is None) != (weight_sum is None):
        raise ValueError("center [M] and weight_sum [N] come together")


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    def _set_tma_boxes(nargs):
        """Autotune pre-hook: the TMA descriptors' box is the tile of the config that runs."""
        if nargs["TMA"]:
            nargs["a_desc"].block_shape = [nargs["BM"], nargs["BK"]]
            nargs["b_desc"].block_shape = [nargs["BN"], nargs["BK"]]

    # The first two were the fastest of 15 tiles at every PixArt-1024 CFG shape on an H100
    # (GPU time, served epilogue; docs/bench/lowbit-gemm-tiles-h100.json), ahead of the best
    # of the earlier list and of cuBLAS bf16.
    _CONFIGS = [
        triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=st,
                      pre_hook=_set_tma_boxes)
        for bm, bn, bk, w, st in (
            (128, 128, 128, 4, 3), (128, 128, 64, 4, 4), (128, 128, 128, 8, 3),
            (128, 256, 128, 8, 3), (128, 64, 128, 4, 4), (64, 128, 128, 4, 4),
            (64, 64, 128, 4, 4),
        )
    ]

    @triton.jit
    def _gelu_tanh(x, HW_TANH: tl.constexpr):
        """GELU, tanh approximation (``F.gelu(approximate="tanh")``), in fp32.

        ``HW_TANH``: the GPU's ``tanh.approx.f32`` (one special-function instruction,
        relative error ~2^-11, below bf16's 2^-8). Written instead as 1 - 2 / (exp(2u) + 1)
        the epilogue cost the GEMM more than the separate GELU pass it replaces. The exp
        form stays for Triton's CPU interpreter, which runs no inline PTX; u is clamped to
        +-10 there (tanh is +-1 to fp32 precision) so exp never overflows."""
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        if HW_TANH:
            t = tl.inline_asm_elementwise(
                "tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            u = tl.minimum(tl.maximum(u, -10.0), 10.0)
            t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        return 0.5 * x * (1.0 + t)

    @triton.jit
    def _lowbit_gemm_kernel(
        a_ptr,
        b_ptr,
        a_desc,
        b_desc,
        a_scale_ptr,
        w_scale_ptr,
        bias_ptr,
        center_ptr,
        weight_sum_ptr,
        c_ptr,
        M,
        N,
        K,
        M_BUCKET,
        stride_am,
        stride_bn,
        stride_cm,
        HAS_BIAS: tl.constexpr,
        HAS_CENTER: tl.constexpr,
        PACKED: tl.constexpr,
        A_FP8: tl.constexpr,
        PAIRED: tl.constexpr,
        GELU_TANH: tl.constexpr,
        HW_TANH: tl.constexpr,
        TMA: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
    ):
        """TMA (unpacked weights, Hopper): A and B tiles come through the tensor-memory
        accelerator (``a_desc`` / ``b_desc``, boxes BM x BK and BN x BK, edges zero-filled)
        instead of per-thread loads, which frees the registers the paired epilogue spills
        otherwise, a measurable gain at PixArt's shapes
        (docs/bench/quantizer-reciprocal-gemm-tma-h100.json)."""
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BM)
        num_pid_n = tl.cdiv(N, BN)
        # grouped ordering: neighbouring programs share B tiles in L2
        GROUP_M: tl.constexpr = 8
        group = pid // (GROUP_M * num_pid_n)
        first_m = group * GROUP_M
        size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % size_m)
        pid_n = (pid % (GROUP_M * num_pid_n)) // size_m

        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        mmask = rm < M
        nmask = rn < N
        rk = tl.arange(0, BK)
        rk2 = tl.arange(0, BK // 2)
        if A_FP8:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
        else:
            acc = tl.zeros((BM, BN), dtype=tl.int32)
        # rows past M load row M-1 (fp8 has no literal-0 "other") and are never stored
        a_rows = a_ptr + tl.minimum(rm, M - 1)[:, None] * stride_am
        for k0 in range(0, K, BK):
            if PACKED:
                # tile-split nibbles: low = k0 + [0, BK/2), high = k0 + BK/2 + [0, BK/2)
                p = tl.load(
                    b_ptr + rn[:, None] * stride_bn + (k0 // 2 + rk2)[None, :],
                    mask=nmask[:, None],
                    other=0,
                )
                p8 = p.to(tl.int8, bitcast=True)
                w_lo = (p8 << 4) >> 4  # arithmetic shifts sign-extend the nibbles
                w_hi = p8 >> 4
                a_lo = tl.load(a_rows + (k0 + rk2)[None, :])
                a_hi = tl.load(a_rows + (k0 + BK // 2 + rk2)[None, :])
                if A_FP8:
                    w_lo = w_lo.to(tl.float32).to(tl.float8e4nv)
                    w_hi = w_hi.to(tl.float32).to(tl.float8e4nv)
                    acc = tl.dot(a_lo, tl.trans(w_lo), acc=acc, out_dtype=tl.float32)
                    acc = tl.dot(a_hi, tl.trans(w_hi), acc=acc, out_dtype=tl.float32)
                else:
                    acc = tl.dot(a_lo, tl.trans(w_lo), acc=acc, out_dtype=tl.int32)
                    acc = tl.dot(a_hi, tl.trans(w_hi), acc=acc, out_dtype=tl.int32)
            else:
                if TMA:
                    a = a_desc.load([pid_m * BM, k0])
                    w = b_desc.load([pid_n * BN, k0])
                else:
                    a = tl.load(a_rows + (k0 + rk)[None, :])
                    w = tl.load(
                        b_ptr + rn[:, None] * stride_bn + (k0 + rk)[None, :],
                        mask=nmask[:, None],
                        other=0,
                    )
                if A_FP8:
                    w = w.to(tl.float32).to(tl.float8e4nv)
                    acc = tl.dot(a, tl.trans(w), acc=acc, out_dtype=tl.float32)
                else:
                    acc = tl.dot(a, tl.trans(w), acc=acc, out_dtype=tl.int32)
        sa = tl.load(a_scale_ptr + rm, mask=mmask, other=0.0)
        sw = tl.load(w_scale_ptr + rn, mask=nmask, other=0.0)
        out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
        if HAS_CENTER:
            mean = tl.load(center_ptr + rm, mask=mmask, other=0.0)
            wsum = tl.load(weight_sum_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
            out += mean[:, None] * wsum[None, :]
        if PAIRED:
            # rows (2i, 2i + 1) of the tile are uncond row p = pid_m * BM/2 + i and its
            # cond difference: store y_u at p and y_u + W d at M/2 + p (the bias once)
            u, d = tl.split(tl.permute(tl.reshape(out, (BM // 2, 2, BN)), (0, 2, 1)))
            if HAS_BIAS:
                u += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            c = u + d
            if GELU_TANH:
                u = _gelu_tanh(u, HW_TANH)
                c = _gelu_tanh(c, HW_TANH)
            pair = pid_m * (BM // 2) + tl.arange(0, BM // 2)
            pmask = (pair < M // 2)[:, None] & nmask[None, :]
            tl.store(c_ptr + pair[:, None] * stride_cm + rn[None, :],
                     u.to(c_ptr.dtype.element_ty), mask=pmask)
            tl.store(c_ptr + (M // 2 + pair)[:, None] * stride_cm + rn[None, :],
                     c.to(c_ptr.dtype.element_ty), mask=pmask)
        else:
            if HAS_BIAS:
                out += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            if GELU_TANH:
                out = _gelu_tanh(out, HW_TANH)
            tl.store(
                c_ptr + rm[:, None] * stride_cm + rn[None, :],
                out.to(c_ptr.dtype.element_ty),
                mask=mmask[:, None] & nmask[None, :],
            )

    def _packed_needs_full_tiles(configs, named_args, **kwargs):
        """Packed int4 weights come in PACK_TILE-wide k tiles (the nibble layout)."""
        if not kwargs["PACKED"]:
            return configs
        return [c for c in configs if c.kwargs["BK"] == PACK_TILE]

    _lowbit_gemm_autotuned = triton.autotune(
        configs=_CONFIGS,
        key=["M_BUCKET", "N", "K", "PACKED", "A_FP8", "TMA"],
        prune_configs_by={"early_config_prune": _packed_needs_full_tiles},
        do_bench=autotune_gpu_time,
    )(_lowbit_gemm_kernel)


#: Whether Triton runs kernels in its CPU interpreter (CI's machines). Read once, at
#: import, as Triton's ``jit`` decorator reads it (read per call, it cost host time at
#: every launch).
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def w4a8_matmul_triton(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    config: dict | None = None,
    center: torch.Tensor | None = None,
    weight_sum: torch.Tensor | None = None,
    paired: bool = False,
    activation: str = "",
    tma: bool | None = None,
) -> torch.Tensor:
    """A ``[M, K]`` int8/e4m3, B ``[N, K/2]`` uint8 (packed) or ``[N, K]`` int8 -> ``[M, N]``.

    ``paired``: the CFG-delta halves restored in the epilogue, as the oracle's ``paired``
    (a tile's rows hold whole pairs: every tile height is even). ``activation``: as the
    oracle's, applied in the epilogue. ``tma``: load the tiles of unpacked weights through
    TMA descriptors (None: as ``TRDQ_GEMM_TMA`` says, see ``_tma_applies``)."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("triton is not installed; use w4a8_matmul_reference")
    _check_rank1(center, weight_sum)
    check_output_activation(activation)
    m, k = a.shape
    if paired:
        _check_paired(m)
    packed = b.dtype == torch.uint8
    n = b.shape[0]
    if (b.shape[1] * 2 if packed else b.shape[1]) != k:
        raise ValueError(f"K mismatch: A {tuple(a.shape)}, B {tuple(b.shape)}")
    if k % PACK_TILE:
        raise ValueError(f"K={k} must be a multiple of {PACK_TILE} for the W4A8 kernel")
    if packed and config is not None and config.get("BK", PACK_TILE) != PACK_TILE:
        raise ValueError(f"packed weights need BK={PACK_TILE} (the layout's tile)")
    if a.dtype not in (torch.int8, torch.float8_e4m3fn):
        raise TypeError(f"A must be int8 or float8_e4m3fn, got {a.dtype}")
    a = a.contiguous()
    b = b.contiguous()
    c = torch.empty((m, n), device=a.device, dtype=out_dtype)
    m_bucket = next_pow2(m)
    if tma is None:
        tma = _tma_applies(a, b)
    if tma and packed:
        raise ValueError("TMA loads are for unpacked (int8) weights")
    # the boxes are set per tile: by the autotuner's pre-hook, or below for an explicit one
    a_desc = TensorDescriptor.from_tensor(a, [16, 16]) if tma else a
    b_desc = TensorDescriptor.from_tensor(b, [16, 16]) if tma else b

    def grid(meta):
        return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)

    tile = None
    if config is not None:  # explicit tile (tests, interpreter, microbenchmarks)
        tile = dict(config)
        _set_tma_boxes({"TMA": tma, "a_desc": a_desc, "b_desc": b_desc, **tile})
    args = (
        a,
        b,
        a_desc,
        b_desc,
        a_scale.float().contiguous(),
        w_scale.float().contiguous(),
        bias if bias is not None else w_scale,
        center.float().contiguous() if center is not None else w_scale,
        weight_sum.float().contiguous() if weight_sum is not None else w_scale,
        c,
        m,
        n,
        k,
        m_bucket,
        a.stride(0),
        b.stride(0),
        c.stride(0),
    )
    constexprs = {
        "HAS_BIAS": bias is not None,
        "HAS_CENTER": center is not None,
        "PACKED": packed,
        "A_FP8": a.dtype == torch.float8_e4m3fn,
        "PAIRED": paired,
        "GELU_TANH": activation == "gelu_tanh",
        "HW_TANH": not INTERPRETING,
        "TMA": tma,
    }
    launch_triton(_lowbit_gemm_autotuned, grid, args, constexprs, tile)
    return c


#: The ``gemm_tma`` kernel switch (``TRDQ_GEMM_TMA``): when the W8A8 GEMM loads its tiles
#: through TMA descriptors. ``graphs`` (default): only for launches recorded into a CUDA
#: graph (``kernels.launch.recording_launches``), where the descriptors' host cost (built and
#: encoded at every launch) is paid once; ``1``: always; ``0``: never (per-thread loads, as
#: packed weights). A module global, set by ``_apply_switches``: read at every launch.
TMA_MODE = "graphs"


def _apply_switches(kernel_switches: switches.KernelSwitches) -> None:
    global TMA_MODE
    TMA_MODE = kernel_switches.gemm_tma


switches.on_change(_apply_switches)


def _tma_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """TMA by default for the W8A8 GEMM (int8 activations, unpacked weights: the one
    measured and tested with it on a GPU) on a Hopper-or-newer GPU, 16-byte aligned bases
    (the rows are K bytes, and K is a multiple of 128), in launches recorded into a CUDA
    graph. Without graphs the step is bound by the host, and TMA's per-launch descriptors
    made it slower (with graphs TMA saves GPU time, docs/KERNELS.md)."""
    return (
        _tma_wanted()
        and a.dtype == torch.int8
        and b.dtype != torch.uint8
        and a.is_cuda
        and not INTERPRETING
        and _has_tma(a.device)
        and a.data_ptr() % 16 == 0
        and b.data_ptr() % 16 == 0
    )


def _tma_wanted() -> bool:
    """The ``gemm_tma`` switch's answer for this launch, before the operands' own conditions."""
    return TMA_MODE == "1" or (TMA_MODE == "graphs" and launches_recorded())


@functools.cache
def _has_tma(device: torch.device) -> bool:
    """Hopper or newer (asked once per device: this runs at every GEMM launch)."""
    return torch.cuda.get_device_capability(device) >= (9, 0)
