"""The pure-torch oracle of the fused activation quantizer, and the host-side pieces the
Triton path (``trdq.kernels.triton_rotate_quant``) shares with it.

``rotate_quant_reference`` computes the same math as both Triton kernels (described in
``trdq.kernels.triton_rotate_quant_math``); both are tested against it. Beside it: the
quantization constants, the Sylvester Hadamard matrices, the interleaved CFG-pair row
order, the output formats' ranges and the argument checks that the oracle and the
launcher apply alike. Nothing here needs Triton or a GPU.
"""

from __future__ import annotations

import functools
import math

import torch

from trdq.primitives import FP8_E4M3_MAX, MIN_SCALE
from trdq.rotation import fwht, hadamard_matrix

__all__ = [
    "E4M3_MAX",
    "EPS",
    "INT8_MAX",
    "block_hadamard_reference",
    "interleaved_pair_order",
    "rotate_quant_reference",
    "sylvester_hadamard",
]

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
