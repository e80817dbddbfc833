"""Fused activation path: bf16 ``[M, K]`` -> (- row mean) -> (/ smooth) -> block Hadamard
-> e4m3 or int8.

A Triton kernel reads the activations, divides by the SmoothQuant vector, applies the
block-diagonal normalized Hadamard rotation (a fast Walsh-Hadamard transform inside each
block of ``HB`` channels, in registers), scales every row and writes the low-bit values
plus the per-row scales. No rotation matmul, no intermediate tensor in memory. Two
kernels share that math:
- the single-pass kernel (``_rotate_quant_rows_kernel``, the default for dynamic scales
  with rows up to ``SINGLE_PASS_MAX_K``, and for wider rows up to ``SINGLE_PASS_LIMIT_K``
  where it times faster than the tiled one): whole rows held in registers, x read once;
- the tiled kernel (``_rotate_quant_kernel``: static scales, the tensor-core rotation,
  wider rows): loops over ``HB``-wide column tiles, re-reading them (mostly from cache)
  for the mean and the absmax in dynamic mode.

Notation: M rows (tokens x batch), K channels, HB the Hadamard block (power of two that
divides K, at most 128; 1152 = 9 x 128).

Scale convention (shared with ``trdq.kernels.base``): ``x_rot ~= q * scale[:, None]``.
- static mode: ``scale`` is given per row (timestep group, CFG half) and returned as is;
- dynamic mode: ``scale = max(absmax(x_rot row) * clip_ratio[row] / qmax, 1e-8)`` with
  ``qmax = 448`` for e4m3 and ``127`` for int8 (``clip_ratio`` one value or one per row).
Values beyond ``qmax`` saturate (e4m3fn has no infinity; an unclamped cast gives NaN).
int8 rounding is round-half-to-even, as ``torch.round``.

Centring (``center_out`` given, dynamic mode only): each row's mean over K is subtracted
before smoothing and rotation and written to ``center_out`` (float32 ``[M]``); the GEMM
adds ``mean x weight_sum`` back (see ``trdq.nn.quant_linear``). The tiled kernel takes
one more read of the row tile (from L2) for the mean instead of three elementwise passes
outside; the single-pass kernel sums the rows it holds.

CFG-delta (``delta_half`` > 0, dynamic mode only): the rows are [uncond; cond] halves of
``delta_half`` rows each, and every cond row ``r`` is replaced by ``x[r] - x[r - delta_half]``
(in float32) before anything else, as ``serve_linear``'s cfg_delta does outside. The tiled
kernel subtracts at each load of x (one more read of the paired uncond tile, usually from
L2); the single-pass kernel holds each pair in one program. Either way no elementwise pass
writes and re-reads all of ``[M, K]``. ``interleave_pairs`` (single-pass only) writes the
pairs as adjacent rows for the GEMM's paired epilogue (``trdq.kernels.triton_w4a8``).

``rotate_quant_reference`` is the pure-torch oracle of the same math; both kernels are
tested against it. Importing this module never needs Triton: ``TRITON_AVAILABLE`` says
whether the kernel can be launched.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

from trdq.kernels.launch import autotune_gpu_time, launch_triton, next_pow2
from trdq.primitives import FP8_E4M3_MAX, MIN_SCALE
from trdq.rotation import fwht, hadamard_block_size, hadamard_matrix

__all__ = [
    "E4M3_MAX",
    "EPS",
    "INT8_MAX",
    "TRITON_AVAILABLE",
    "block_hadamard_reference",
    "hadamard_block_size",
    "interleaved_pair_order",
    "rotate_quant_reference",
    "rotate_quant_triton",
    "single_pass_applies",
    "sylvester_hadamard",
]

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None

EPS = MIN_SCALE
E4M3_MAX = FP8_E4M3_MAX
INT8_MAX = 127.0


@functools.lru_cache(maxsize=16)
def _sylvester_cpu(n: int) -> torch.Tensor:
    return hadamard_matrix(n)


def sylvester_hadamard(n: int, device: torch.device | str = "cpu", dtype=torch.float32):
    """Unnormalized Sylvester Hadamard matrix (entries +-1), ``H[i, j] = (-1)^popcount(i&j)``.

    This is the order an in-place fast Walsh-Hadamard transform produces.
    """
    return _sylvester_cpu(n).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _kernel_hadamard(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The +-1 matrix the tiled kernel's tensor-core rotation reads, made once per device
    and dtype: a copy from the CPU at every call fails under CUDA-graph capture.
    Read-only."""
    return sylvester_hadamard(n, device, dtype)


def block_hadamard_reference(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x R`` with R block-diagonal ``H_block / sqrt(block)``, in float32."""
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"block {block} does not divide K={k}")
    h = sylvester_hadamard(block, x.device) / math.sqrt(block)
    xb = x.float().reshape(*x.shape[:-1], k // block, block)
    return (xb @ h).reshape(x.shape)


def _qmax(out_dtype: torch.dtype) -> float:
    if out_dtype == torch.float8_e4m3fn:
        return E4M3_MAX
    if out_dtype == torch.int8:
        return INT8_MAX
    raise ValueError(f"unsupported output dtype {out_dtype}; use float8_e4m3fn or int8")


def rotate_quant_reference(
    x: torch.Tensor,
    *,
    rotation_block: int | None,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
    center_out: torch.Tensor | None = None,
    delta_half: int = 0,
    interleave_pairs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch oracle: ``[M, K]`` -> (``q [M, K]`` out_dtype, ``scale [M]`` float32).

    The keywords are the activation quantization as every op spells it (``trdq.kernels.ops``,
    ``cpu_native.rotate_quant``): ``rotation_block`` (None: no rotation), ``smooth``,
    ``row_scale`` (None: dynamic), ``clip_ratio``, the output format, ``center_out``,
    ``delta_half``.

    Same arithmetic as ``trdq.kernels.reference`` (``rotation.fwht``, ``primitives``),
    but returns the low-bit tensor instead of dequantizing it. ``center_out`` ([M]
    float32): centre each row first and write its mean there. ``delta_half`` > 0 (with
    M = 2 x delta_half): quantize the second half as its difference from the first;
    ``interleave_pairs`` then returns the rows (codes, scales, means) in the order uncond
    0, cond 0, uncond 1, cond 1, ... (what ``w4a8_matmul_*(paired=True)`` reads).
    """
    qmax = _qmax(out_dtype)
    xf = x.float()
    if delta_half:
        _check_delta(delta_half, xf.shape[0], row_scale)
        # float32, as the kernel; a new tensor (x.float() may be x itself)
        xf = torch.cat((xf[:delta_half], xf[delta_half:] - xf[:delta_half]))
    if center_out is not None:
        _check_center(center_out, xf.shape[0], row_scale)
        mean = xf.mean(dim=-1)
        center_out.copy_(mean)
        xf = xf - mean[:, None]
    if smooth is not None:
        xf = xf / smooth.float()
    if rotation_block is not None:
        xf = fwht(xf, rotation_block)
    if row_scale is not None:
        scale = row_scale.float().reshape(-1).expand(xf.shape[0]).clamp_min(MIN_SCALE)
    else:
        clip = clip_ratio.float() if isinstance(clip_ratio, torch.Tensor) else clip_ratio
        scale = (xf.abs().amax(dim=-1) * clip / qmax).clamp_min(MIN_SCALE)
    v = torch.clamp(xf / scale[:, None], -qmax, qmax)
    q = torch.round(v).to(torch.int8) if out_dtype == torch.int8 else v.to(out_dtype)
    if interleave_pairs:
        if not delta_half:
            raise ValueError("interleaved CFG pairs need delta_half")
        order = interleaved_pair_order(delta_half, x.device)
        q, scale = q[order], scale[order]
        if center_out is not None:
            center_out.copy_(center_out[order])
    return q, scale.contiguous()


def interleaved_pair_order(half: int, device=None) -> torch.Tensor:
    """Row indices ``[0, half, 1, half + 1, ...]``: the [uncond; cond] halves interleaved."""
    r = torch.arange(half, device=device)
    return torch.stack((r, r + half), dim=1).reshape(-1)


def _check_center(center_out: torch.Tensor, rows: int, row_scale) -> None:
    if row_scale is not None:
        raise ValueError("centring is for dynamic (per-token) activations, not static scales")
    if center_out.dtype != torch.float32 or center_out.shape != (rows,):
        raise ValueError(f"center_out must be float32 [{rows}], got {center_out.dtype} "
                         f"{tuple(center_out.shape)}")


def _check_delta(delta_half: int, rows: int, row_scale) -> None:
    if row_scale is not None:
        raise ValueError("CFG-delta is for dynamic (per-token) activations, not static scales")
    if 2 * delta_half != rows:
        raise ValueError(f"delta_half must be half of the {rows} rows, got {delta_half}")


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def round_half_even_int8(v):
        """Round half to even (as torch.round) and narrow to int8: adding 1.5 * 2^23 leaves
        no fraction bits in fp32, so the add itself rounds; exact for |v| < 2^22. The
        caller keeps v within the int8 range."""
        return ((v + 12582912.0) - 12582912.0).to(tl.int8)

    @triton.jit
    def _butterfly(x, BLOCK_M: tl.constexpr, HB: tl.constexpr, H: tl.constexpr):
        """One stage at stride H: element k = j*2H + i pairs with k + H, (a, b) -> (a+b, a-b).

        View [BLOCK_M, HB/2H, 2, H], move the pair axis last, split, butterfly, join back.
        """
        y = tl.reshape(x, (BLOCK_M, HB // (2 * H), 2, H))
        y = tl.permute(y, (0, 1, 3, 2))
        a, b = tl.split(y)
        y = tl.join(a + b, a - b)
        y = tl.permute(y, (0, 1, 3, 2))
        return tl.reshape(y, (BLOCK_M, HB))

    @triton.jit
    def _fwht(x, BLOCK_M: tl.constexpr, HB: tl.constexpr):
        """In-register unnormalized Walsh-Hadamard transform along axis 1 of [BLOCK_M, HB]
        (HB a power of two, 2..128), stages unrolled at compile time; natural (Sylvester)
        order."""
        if HB >= 2:
            x = _butterfly(x, BLOCK_M, HB, 1)
        if HB >= 4:
            x = _butterfly(x, BLOCK_M, HB, 2)
        if HB >= 8:
            x = _butterfly(x, BLOCK_M, HB, 4)
        if HB >= 16:
            x = _butterfly(x, BLOCK_M, HB, 8)
        if HB >= 32:
            x = _butterfly(x, BLOCK_M, HB, 16)
        if HB >= 64:
            x = _butterfly(x, BLOCK_M, HB, 32)
        if HB >= 128:
            x = _butterfly(x, BLOCK_M, HB, 64)
        return x

    @triton.jit
    def _load_x(x_ptr, rows, rmask, cols, stride_xm, delta_half, DELTA: tl.constexpr):
        """The ``[BLOCK_M, HB]`` tile of x in float32; with DELTA, rows >= delta_half are
        their difference from the paired uncond row (every load of x goes through here)."""
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0
        ).to(tl.float32)
        if DELTA:
            paired = rmask & (rows >= delta_half)
            x = x - tl.load(
                x_ptr + (rows - delta_half)[:, None] * stride_xm + cols[None, :],
                mask=paired[:, None],
                other=0.0,
            ).to(tl.float32)
        return x

    @triton.jit
    def _load_rotated(
        x_ptr,
        smooth_ptr,
        h_ptr,
        rows,
        rmask,
        k0,
        stride_xm,
        inv_sqrt_hb,
        mean,
        delta_half,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        LOG_HB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        USE_DOT: tl.constexpr,
        CENTER: tl.constexpr,
        DELTA: tl.constexpr,
    ):
        cols = k0 + tl.arange(0, HB)
        x = _load_x(x_ptr, rows, rmask, cols, stride_xm, delta_half, DELTA)
        if CENTER:
            x = x - mean[:, None]
        if HAS_SMOOTH:
            x = x / tl.load(smooth_ptr + cols)[None, :]
        if ROTATE:
            if USE_DOT:
                # H has entries +-1 (exact in bf16); split x into bf16 hi + lo so the
                # tensor-core product keeps ~16 mantissa bits of the fp32 input.
                hb = tl.arange(0, HB)
                hmat = tl.load(h_ptr + hb[:, None] * HB + hb[None, :])
                x_hi = x.to(tl.bfloat16)
                x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
                x = tl.dot(x_hi, hmat, out_dtype=tl.float32)
                x = tl.dot(x_lo, hmat, acc=x, out_dtype=tl.float32)
            else:
                x = _fwht(x, BLOCK_M, HB)
            x = x * inv_sqrt_hb
        return x

    @triton.jit
    def _rotate_quant_kernel(
        x_ptr,
        smooth_ptr,
        scale_in_ptr,
        clip_ptr,
        h_ptr,
        q_ptr,
        scale_out_ptr,
        center_out_ptr,
        M,
        K,
        M_BUCKET,
        stride_xm,
        stride_qm,
        qmax,
        inv_sqrt_hb,
        eps,
        delta_half,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        LOG_HB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        STATIC: tl.constexpr,
        OUT_INT8: tl.constexpr,
        USE_DOT: tl.constexpr,
        CENTER: tl.constexpr,
        DELTA: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if CENTER:
            # Pass 0: the row mean of the activations (differenced first with DELTA;
            # dynamic mode only).
            for k0 in range(0, K, HB):
                cols = k0 + tl.arange(0, HB)
                x = _load_x(x_ptr, rows, rmask, cols, stride_xm, delta_half, DELTA)
                mean += tl.sum(x, axis=1)
            mean = mean / K
            tl.store(center_out_ptr + rows, mean, mask=rmask)
        if STATIC:
            scale = tl.maximum(tl.load(scale_in_ptr + rows, mask=rmask, other=1.0), eps)
        else:
            # Pass 1: per-token absmax of the rotated row. Pass 2 re-reads the same
            # BLOCK_M x K tile, which is still in L2, so DRAM sees x once.
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k0 in range(0, K, HB):
                xr = _load_rotated(
                    x_ptr,
                    smooth_ptr,
                    h_ptr,
                    rows,
                    rmask,
                    k0,
                    stride_xm,
                    inv_sqrt_hb,
                    mean,
                    delta_half,
                    BLOCK_M,
                    HB,
                    LOG_HB,
                    HAS_SMOOTH,
                    ROTATE,
                    USE_DOT,
                    CENTER,
                    DELTA,
                )
                amax = tl.maximum(amax, tl.max(tl.abs(xr), axis=1))
            # each row's own clip ratio (the CFG halves differ), read-only: the autotuner
            # re-runs the kernel on the same buffers, so it must not read what it writes
            clip = tl.load(clip_ptr + rows, mask=rmask, other=1.0)
            scale = tl.maximum(amax * clip / qmax, eps)
            tl.store(scale_out_ptr + rows, scale, mask=rmask)
        for k0 in range(0, K, HB):
            xr = _load_rotated(
                x_ptr,
                smooth_ptr,
                h_ptr,
                rows,
                rmask,
                k0,
                stride_xm,
                inv_sqrt_hb,
                mean,
                delta_half,
                BLOCK_M,
                HB,
                LOG_HB,
                HAS_SMOOTH,
                ROTATE,
                USE_DOT,
                CENTER,
                DELTA,
            )
            v = xr / scale[:, None]
            v = tl.minimum(tl.maximum(v, -qmax), qmax)
            if OUT_INT8:
                out = round_half_even_int8(v)
            else:
                out = v.to(tl.float8e4nv)
            cols = k0 + tl.arange(0, HB)
            tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], out, mask=rmask[:, None])

    @triton.jit
    def _centre_smooth_rotate(
        x,
        mean,
        cmask,
        inv_smooth,
        inv_sqrt_hb,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        KT: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        CENTER: tl.constexpr,
        PADDED: tl.constexpr,
    ):
        """One ``[BLOCK_M, KT]`` register tile of whole rows: subtract the row mean, divide
        by the smoothing vector (multiply by ``inv_smooth``, its reciprocal), rotate every
        HB-wide block. With PADDED, columns >= K stay zero."""
        if CENTER:
            x = x - mean[:, None]
            if PADDED:
                x = tl.where(cmask[None, :], x, 0.0)
        if HAS_SMOOTH:
            x = x * inv_smooth[None, :]
        if ROTATE:
            # every HB-wide block of every row is one row of the transform
            x = tl.reshape(x, (BLOCK_M * (KT // HB), HB))
            x = _fwht(x, BLOCK_M * (KT // HB), HB)
            x = tl.reshape(x, (BLOCK_M, KT)) * inv_sqrt_hb
        return x

    @triton.jit
    def _store_codes(
        x, inv_scale, rows, rmask, cols, cmask, q_ptr, stride_qm, qmax, OUT_INT8: tl.constexpr
    ):
        v = tl.minimum(tl.maximum(x * inv_scale[:, None], -qmax), qmax)
        if OUT_INT8:
            out = round_half_even_int8(v)
        else:
            out = v.to(tl.float8e4nv)
        mask = rmask[:, None] & cmask[None, :]
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], out, mask=mask)

    @triton.jit
    def _quantize_whole_rows(
        xa,
        xb,
        rows,
        out_rows,
        rmask,
        K,
        inv_smooth_a,
        inv_smooth_b,
        clip_ptr,
        q_ptr,
        scale_out_ptr,
        center_out_ptr,
        stride_qm,
        qmax,
        inv_sqrt_hb,
        eps,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        KA: tl.constexpr,
        KB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        OUT_INT8: tl.constexpr,
        CENTER: tl.constexpr,
        PADDED: tl.constexpr,
    ):
        """Quantize rows held in registers as two tiles: ``xa`` the first KA columns (the
        largest power of two of whole blocks within K) and, when KB > 0, ``xb`` the rest
        padded to KB columns (a power of two; those >= K are zero). 1152 = 1024 + 128 and
        4608 = 4096 + 512 need no padding, where one tile would hold 2048 and 8192.
        ``rows`` index x and the clip ratios, ``out_rows`` the codes, scales and means.
        ``inv_smooth_a`` / ``_b``: the smoothing vector's reciprocals for the two tiles.
        Reciprocals once per column and program (and once per row for the scale) instead
        of two divisions per value, which run on the special-function units at a fraction
        of the FP32 rate (docs/bench/quantizer-reciprocal-gemm-tma-h100.json)."""
        cols_a = tl.arange(0, KA)
        cmask_a = cols_a < K
        mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if CENTER:
            total = tl.sum(xa, axis=1)
            if KB > 0:
                total += tl.sum(xb, axis=1)
            mean = total / K
            tl.store(center_out_ptr + out_rows, mean, mask=rmask)
        xa = _centre_smooth_rotate(
            xa, mean, cmask_a, inv_smooth_a, inv_sqrt_hb,
            BLOCK_M, HB, KA, HAS_SMOOTH, ROTATE, CENTER, PADDED,
        )
        amax = tl.max(tl.abs(xa), axis=1)
        if KB > 0:
            cols_b = KA + tl.arange(0, KB)
            cmask_b = cols_b < K
            xb = _centre_smooth_rotate(
                xb, mean, cmask_b, inv_smooth_b, inv_sqrt_hb,
                BLOCK_M, HB, KB, HAS_SMOOTH, ROTATE, CENTER, PADDED,
            )
            amax = tl.maximum(amax, tl.max(tl.abs(xb), axis=1))
        clip = tl.load(clip_ptr + rows, mask=rmask, other=1.0)
        scale = tl.maximum(amax * clip / qmax, eps)
        tl.store(scale_out_ptr + out_rows, scale, mask=rmask)
        inv_scale = 1.0 / scale
        _store_codes(
            xa, inv_scale, out_rows, rmask, cols_a, cmask_a, q_ptr, stride_qm, qmax, OUT_INT8
        )
        if KB > 0:
            _store_codes(
                xb, inv_scale, out_rows, rmask, cols_b, cmask_b, q_ptr, stride_qm, qmax,
                OUT_INT8,
            )

    @triton.jit
    def _smooth_reciprocals(smooth_ptr, K, KA: tl.constexpr, KB: tl.constexpr):
        """``1 / smooth`` as the two column tiles of ``_quantize_whole_rows`` (padding
        columns 1)."""
        cols_a = tl.arange(0, KA)
        inv_a = 1.0 / tl.load(smooth_ptr + cols_a, mask=cols_a < K, other=1.0)
        inv_b = inv_a
        if KB > 0:
            cols_b = KA + tl.arange(0, KB)
            inv_b = 1.0 / tl.load(smooth_ptr + cols_b, mask=cols_b < K, other=1.0)
        return inv_a, inv_b

    @triton.jit
    def _load_rows(x_ptr, rows, rmask, K, stride_xm, KA: tl.constexpr, KB: tl.constexpr):
        """Rows as the two float32 register tiles of ``_quantize_whole_rows`` (``xb`` is
        ``xa`` again when KB = 0, unused)."""
        cols_a = tl.arange(0, KA)
        mask_a = rmask[:, None] & (cols_a < K)[None, :]
        xa = tl.load(x_ptr + rows[:, None] * stride_xm + cols_a[None, :], mask=mask_a, other=0.0)
        xa = xa.to(tl.float32)
        xb = xa
        if KB > 0:
            cols_b = KA + tl.arange(0, KB)
            mask_b = rmask[:, None] & (cols_b < K)[None, :]
            xb = tl.load(
                x_ptr + rows[:, None] * stride_xm + cols_b[None, :], mask=mask_b, other=0.0
            ).to(tl.float32)
        return xa, xb

    @triton.jit
    def _rotate_quant_rows_kernel(
        x_ptr,
        smooth_ptr,
        clip_ptr,
        q_ptr,
        scale_out_ptr,
        center_out_ptr,
        R,
        K,
        M_BUCKET,
        stride_xm,
        stride_qm,
        qmax,
        inv_sqrt_hb,
        eps,
        delta_half,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        KA: tl.constexpr,
        KB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        OUT_INT8: tl.constexpr,
        CENTER: tl.constexpr,
        DELTA: tl.constexpr,
        INTERLEAVE: tl.constexpr,
        PADDED: tl.constexpr,
        TILES: tl.constexpr,
    ):
        """Single-pass dynamic mode: each program holds whole rows in registers, so x is
        read once and nothing is re-read for the mean or the absmax (PADDED: the tiles hold
        columns beyond K, KA + KB > K). With DELTA a program
        takes ``BLOCK_M`` uncond rows (R = delta_half) and their cond partners: each uncond
        tile is loaded once for both. INTERLEAVE (with DELTA) writes uncond row r and its
        cond difference as output rows 2r and 2r + 1, the order the paired GEMM reads.
        A program quantizes TILES consecutive tiles of ``BLOCK_M`` rows, so the smoothing
        vector's reciprocals (K loads and divisions) are made once per TILES tiles."""
        pid = tl.program_id(0)
        inv_sa, inv_sb = 1.0, 1.0
        if HAS_SMOOTH:
            inv_sa, inv_sb = _smooth_reciprocals(smooth_ptr, K, KA, KB)
        for t in tl.range(0, TILES):
            rows = (pid * TILES + t) * BLOCK_M + tl.arange(0, BLOCK_M)
            rmask = rows < R
            out_u = 2 * rows if INTERLEAVE else rows
            xa, xb = _load_rows(x_ptr, rows, rmask, K, stride_xm, KA, KB)
            _quantize_whole_rows(
                xa, xb, rows, out_u, rmask, K, inv_sa, inv_sb, clip_ptr, q_ptr, scale_out_ptr,
                center_out_ptr, stride_qm, qmax, inv_sqrt_hb, eps,
                BLOCK_M, HB, KA, KB, HAS_SMOOTH, ROTATE, OUT_INT8, CENTER, PADDED,
            )
            if DELTA:
                cond = rows + delta_half
                out_c = 2 * rows + 1 if INTERLEAVE else cond
                ca, cb = _load_rows(x_ptr, cond, rmask, K, stride_xm, KA, KB)
                _quantize_whole_rows(
                    ca - xa, cb - xb, cond, out_c, rmask, K, inv_sa, inv_sb, clip_ptr, q_ptr,
                    scale_out_ptr, center_out_ptr, stride_qm, qmax, inv_sqrt_hb, eps,
                    BLOCK_M, HB, KA, KB, HAS_SMOOTH, ROTATE, OUT_INT8, CENTER, PADDED,
                )

if TRITON_AVAILABLE:
    # Rows per program and warps: tuned once per (K, power-of-two bucket of M, mode) on
    # the first call. Re-running is harmless: static mode only reads its scales, dynamic
    # mode rewrites the same values. The small tiles (2-8 rows) are for the dynamic
    # passes: each re-reads its rows, which stay in cache only when a program's tile is
    # small (docs/bench/rotate-quant-tiles-h100.json).
    _rotate_quant_autotuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": bm}, num_warps=w)
            for bm, w in ((2, 1), (4, 2), (8, 2), (8, 4), (16, 4), (32, 4), (32, 8), (64, 8))
        ],
        key=[
            "K", "M_BUCKET", "STATIC", "HAS_SMOOTH", "ROTATE", "OUT_INT8", "USE_DOT", "CENTER",
            "DELTA",
        ],
        do_bench=autotune_gpu_time,
    )(_rotate_quant_kernel)

    def _fits_in_registers(configs, named_args, **kwargs):
        """Drop the whole-row tiles that would hold more than 128 values a thread: they
        spill registers, which costs several times the kernel's time. With CFG-delta a
        program holds each uncond row beside its cond partner: twice the values."""
        kp = (kwargs["KA"] + kwargs["KB"]) * (2 if kwargs.get("DELTA") else 1)
        kept = [c for c in configs if c.kwargs["BLOCK_M"] * kp <= 128 * 32 * c.num_warps]
        return kept or configs[-1:]

    # One or two whole rows per program; the warps spread each row's KA + KB values. The
    # fastest tiles on an H100 (GPU time, docs/bench/rotate-quant-single-pass-h100.json):
    # one row per warp at K = 1152, one row per two warps at K = 4608.
    # TILES > 1: a program takes several consecutive tiles and loads the smoothing vector
    # once for all of them.
    _rotate_quant_rows_autotuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": bm, "TILES": tiles}, num_warps=w)
            for bm, w in ((1, 1), (1, 2), (1, 4), (2, 4), (1, 8), (2, 8), (1, 16))
            for tiles in (1, 4)
        ],
        key=["K", "M_BUCKET", "HAS_SMOOTH", "ROTATE", "OUT_INT8", "CENTER", "DELTA"],
        prune_configs_by={"early_config_prune": _fits_in_registers},
        do_bench=autotune_gpu_time,
    )(_rotate_quant_rows_kernel)

# The single-pass kernel holds whole rows in registers: it serves by default up to
# SINGLE_PASS_MAX_K (padded) columns and can hold up to SINGLE_PASS_LIMIT_K (16 warps hold
# 32 values a thread there). Between the two, the first call of each shape times both
# kernels on the GPU and keeps the faster (``_wide_rows_single_pass``; by hand:
# ``microbench --rotate-quant-wide``).
SINGLE_PASS_MAX_K = 8192
SINGLE_PASS_LIMIT_K = 16384


def single_pass_applies(k: int, hb: int, static: bool = False, use_dot: bool = False,
                        limit: int = SINGLE_PASS_MAX_K) -> bool:
    """Whether the single-pass kernel serves this call: dynamic scales, the butterfly
    rotation, and rows that fit its register tiles (``limit`` padded columns: the default
    choice's, or ``SINGLE_PASS_LIMIT_K`` when the caller asks for the single pass)."""
    return not static and not use_dot and sum(_row_tiles(k, hb)) <= limit


@functools.lru_cache(maxsize=64)
def _row_tiles(k: int, hb: int) -> tuple[int, int]:
    """The single-pass kernel's two register tiles of a row: KA, the largest power of two
    of whole ``hb`` blocks within K, and KB, the rest rounded up to a power of two (0 when
    KA = K)."""
    ka = hb << ((k // hb).bit_length() - 1)
    return ka, next_pow2(k - ka) if k > ka else 0


def rotate_quant_triton(
    x: torch.Tensor,
    *,
    rotation_block: int | None,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
    center_out: torch.Tensor | None = None,
    delta_half: int = 0,
    interleave_pairs: bool = False,
    use_dot: bool = False,
    single_pass: bool | None = None,
    block_m: int | None = None,
    num_warps: int = 4,
    tiles_per_program: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel; same contract as ``rotate_quant_reference`` (x 2-D, rows contiguous).

    ``single_pass`` (dynamic mode, butterfly rotation; True up to ``SINGLE_PASS_LIMIT_K``;
    None = up to ``SINGLE_PASS_MAX_K``, and above it the kernel timed faster for the
    shape) picks the whole-row kernel, which reads x once; otherwise the
    tiled kernel loops over ``HB``-wide column tiles and re-reads them for the mean and the
    absmax. Both compute the same math and are tested against the oracle.
    ``block_m``, ``num_warps`` and (single-pass) ``tiles_per_program``: an explicit tile
    instead of the autotuner's pick (tests, the interpreter, microbenchmarks).
    """
    if not TRITON_AVAILABLE:
        raise RuntimeError("triton is not installed; use rotate_quant_reference")
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError("x must be a 2-D tensor with contiguous rows")
    m, k = x.shape
    qmax = _qmax(out_dtype)
    hb = rotation_block if rotation_block is not None else hadamard_block_size(k)
    if k % hb or hb & (hb - 1) or hb > 128:
        raise ValueError(f"rotation block {hb} must be a power of two <= 128 dividing K={k}")
    q = torch.empty((m, k), device=x.device, dtype=out_dtype)
    static = row_scale is not None
    if center_out is not None:
        _check_center(center_out, m, row_scale)
    if delta_half:
        _check_delta(delta_half, m, row_scale)
    # (the fast paths below avoid extra small kernels: this runs ~300 times per DiT step)
    if row_scale is not None:  # static
        scale = row_scale
        if scale.dtype != torch.float32 or scale.dim() != 1 or scale.numel() != m:
            scale = scale.to(torch.float32).reshape(-1).expand(m)
        scale = scale.contiguous()
        clip = scale  # unused in static mode
    else:
        scale = torch.empty((m,), device=x.device, dtype=torch.float32)
        if isinstance(clip_ratio, torch.Tensor):
            clip = clip_ratio.to(x.device, torch.float32).reshape(-1).expand(m).contiguous()
        else:
            clip = torch.full((m,), float(clip_ratio), device=x.device, dtype=torch.float32)
    smooth_f32 = None if smooth is None else smooth.to(torch.float32).contiguous()
    use_dot = bool(use_dot and rotation_block is not None and hb >= 16)
    limit = SINGLE_PASS_LIMIT_K if single_pass else SINGLE_PASS_MAX_K
    rows_ok = single_pass_applies(k, hb, static, use_dot, limit)
    if interleave_pairs and not (delta_half and rows_ok and single_pass is not False):
        raise ValueError("interleaved CFG pairs need delta_half and the single-pass kernel")
    if single_pass and not rows_ok:
        raise ValueError("the single-pass kernel is for dynamic scales with the butterfly "
                         f"rotation and K <= {SINGLE_PASS_LIMIT_K} (padded)")

    def launch_rows():
        _launch_rows_kernel(x, q, smooth_f32, clip, scale,
                            center_out, hb, rotation_block is not None, qmax, delta_half, block_m,
                            num_warps, interleave_pairs, tiles_per_program)

    def launch_tiled():
        _launch_tiled_kernel(x, q, smooth_f32, clip, scale, center_out, hb, rotation_block,
                             static, out_dtype, use_dot, delta_half, block_m, num_warps)

    if rows_ok and single_pass is not False:
        launch_rows()
    elif (single_pass is None and block_m is None
          and single_pass_applies(k, hb, static, use_dot, SINGLE_PASS_LIMIT_K)):
        # rows wider than the default crossover: whichever kernel is faster here
        key = (k, next_pow2(m), smooth is not None, rotation_block is not None,
               center_out is not None, delta_half > 0, out_dtype, str(x.device))
        (launch_rows if _wide_rows_single_pass(key, x, launch_rows, launch_tiled)
         else launch_tiled)()
    else:
        launch_tiled()
    return q, scale


#: (K, M bucket, smoothing, rotation, centring, CFG-delta, output dtype, device) -> whether
#: the single pass beat the tiled kernel there; see ``_wide_rows_single_pass``
_WIDE_ROWS_CHOICE: dict[tuple, bool] = {}


def _can_time(x: torch.Tensor) -> bool:
    """Whether the two kernels can be timed on ``x``'s device (a GPU; not the interpreter)."""
    return x.is_cuda


def _time_ms(launch) -> float:
    return float(autotune_gpu_time(launch, None))


def _wide_rows_single_pass(key: tuple, x: torch.Tensor, launch_rows, launch_tiled) -> bool:
    """For rows between ``SINGLE_PASS_MAX_K`` and ``SINGLE_PASS_LIMIT_K`` padded columns:
    time both kernels once per key on the GPU (each after its own tile autotuning, GPU time
    from CUDA graph replays, as the autotuners time tiles) and keep the faster. Either
    writes the same codes and scales, so the timing runs leave the call's outputs right.
    Without a GPU clock the tiled kernel serves."""
    if key not in _WIDE_ROWS_CHOICE:
        if not _can_time(x):
            return False
        _WIDE_ROWS_CHOICE[key] = _time_ms(launch_rows) < _time_ms(launch_tiled)
    return _WIDE_ROWS_CHOICE[key]


def _launch_tiled_kernel(
    x, q, smooth_f32, clip, scale, center_out, hb, rotation_block, static, out_dtype, use_dot,
    delta_half, block_m, num_warps,
):
    """Launch the tiled kernel: one program per ``BLOCK_M`` rows, looping over ``HB``-wide
    column tiles (re-read for the mean and the absmax in dynamic mode)."""
    m, k = x.shape
    qmax = _qmax(out_dtype)
    h = _kernel_hadamard(hb, x.device, torch.bfloat16) if use_dot else scale
    tile = None
    if block_m is not None:  # explicit tile: tests, the interpreter, microbenchmarks
        tile = {"BLOCK_M": max(block_m, 16 if use_dot else 1), "num_warps": num_warps}

    def grid(cfg):
        return (triton.cdiv(m, cfg["BLOCK_M"]),)

    args = (
        x,
        smooth_f32 if smooth_f32 is not None else scale,  # (a pointer unused without it)
        scale,
        clip,
        h,
        q,
        scale,
        center_out if center_out is not None else scale,
        m,
        k,
        next_pow2(m),
        x.stride(0),
        q.stride(0),
        qmax,
        1.0 / math.sqrt(hb),
        EPS,
        delta_half,
    )
    constexprs = {
        "HB": hb,
        "LOG_HB": int(math.log2(hb)),
        "HAS_SMOOTH": smooth_f32 is not None,
        "ROTATE": rotation_block is not None,
        "STATIC": static,
        "OUT_INT8": out_dtype == torch.int8,
        "USE_DOT": use_dot,
        "CENTER": center_out is not None,
        "DELTA": delta_half > 0,
    }
    launch_triton(_rotate_quant_autotuned, grid, args, constexprs, tile)


def _launch_rows_kernel(
    x, q, smooth, clip, scale, center_out, hb, rotate, qmax, delta_half, block_m, num_warps,
    interleave_pairs=False, tiles_per_program=1,
):
    """Launch the single-pass kernel: one program per ``TILES`` tiles of ``BLOCK_M`` rows,
    or of ``BLOCK_M`` (uncond, cond) row pairs with CFG-delta."""
    m, k = x.shape
    ka, kb = _row_tiles(k, hb)
    rows = delta_half if delta_half else m
    tile = None
    if block_m is not None:
        tile = {"BLOCK_M": block_m, "num_warps": num_warps, "TILES": tiles_per_program}

    def grid(cfg):
        return (triton.cdiv(rows, cfg["BLOCK_M"] * cfg["TILES"]),)

    args = (
        x,
        smooth if smooth is not None else scale,
        clip,
        q,
        scale,
        center_out if center_out is not None else scale,
        rows,
        k,
        next_pow2(m),
        x.stride(0),
        q.stride(0),
        qmax,
        1.0 / math.sqrt(hb),
        EPS,
        delta_half,
    )
    constexprs = {
        "HB": hb,
        "KA": ka,
        "KB": kb,
        "HAS_SMOOTH": smooth is not None,
        "ROTATE": rotate,
        "OUT_INT8": q.dtype == torch.int8,
        "CENTER": center_out is not None,
        "DELTA": delta_half > 0,
        "INTERLEAVE": interleave_pairs,
        "PADDED": ka + kb > k,
    }
    launch_triton(_rotate_quant_rows_autotuned, grid, args, constexprs, tile)
