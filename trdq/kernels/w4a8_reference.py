"""The pure-torch oracle of the W4A8 GEMM, and the tile-split nibble layout its kernel reads.

``w4a8_matmul_reference`` computes what the Triton kernel computes (its math, notation and
layout: ``trdq.kernels.triton_w4a8_kernel``); the kernel is tested against it.
``pack_int4_tiled`` / ``unpack_int4_tiled`` convert between the library's canonical int4
packing and that layout. The argument checks are shared with the launcher
(``trdq.kernels.triton_w4a8``). Nothing here needs Triton or a GPU.
"""

from __future__ import annotations

import torch

from trdq.kernels.base import apply_output_activation, check_output_activation
from trdq.primitives import pack_int4, unpack_int4

__all__ = [
    "PACK_TILE",
    "pack_int4_tiled",
    "unpack_int4_tiled",
    "w4a8_matmul_reference",
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

