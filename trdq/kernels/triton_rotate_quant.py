"""The fused activation quantizer on the GPU (bf16 ``[M, K]`` -> int8 or e4m3 codes and
``[M]`` scales), and the module its callers import: ``rotate_quant_triton`` checks its
arguments, picks one of the two Triton kernels and launches it.

- the single-pass kernel (``trdq.kernels.triton_rotate_quant_rows``) serves dynamic
  scales with the butterfly rotation and rows up to ``SINGLE_PASS_MAX_K`` (padded)
  columns, and wider rows up to ``SINGLE_PASS_LIMIT_K`` where it times faster than the
  tiled one (``_wide_rows_single_pass``);
- the tiled kernel (``trdq.kernels.triton_rotate_quant_tiled``) serves the rest: static
  scales, the tensor-core rotation, wider rows.

The math both compute, its notation and scale convention:
``trdq.kernels.triton_rotate_quant_math``. The pure-torch oracle ``rotate_quant_reference``
and the host-side helpers it shares with this launcher (constants, Hadamard matrices,
argument checks) live in ``trdq.kernels.rotate_quant_reference`` and are re-exported here.
Importing this module never needs Triton: ``TRITON_AVAILABLE`` says whether the kernels
can be launched.
"""

from __future__ import annotations

import functools
import math

import torch

from trdq.kernels.launch import autotune_gpu_time, launch_triton, next_pow2
from trdq.kernels.rotate_quant_reference import (
    E4M3_MAX,
    EPS,
    INT8_MAX,
    _check_center,
    _check_delta,
    _qmax,
    block_hadamard_reference,
    interleaved_pair_order,
    rotate_quant_reference,
    sylvester_hadamard,
)
from trdq.kernels.triton_rotate_quant_math import TRITON_AVAILABLE
from trdq.rotation import hadamard_block_size

if TRITON_AVAILABLE:
    import triton

    from trdq.kernels.triton_rotate_quant_rows import _rotate_quant_rows_autotuned
    from trdq.kernels.triton_rotate_quant_tiled import _rotate_quant_autotuned

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


@functools.lru_cache(maxsize=32)
def _kernel_hadamard(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The +-1 matrix the tiled kernel's tensor-core rotation reads, made once per device
    and dtype: a copy from the CPU at every call fails under CUDA-graph capture.
    Read-only."""
    return sylvester_hadamard(n, device, dtype)


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
