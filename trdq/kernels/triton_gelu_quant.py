"""tanh GELU and the next linear's e4m3 activation quantizer in one pass: ``gelu_quant``,
and with an ungated prefix concatenated before it: ``cat_gelu_quant``.

Why: inside a fused feed-forward (``trdq.nn.fused_block``, ``trdq.nn.fused_mlp``) the
hidden activation is ``GELU(x W1^T + b1)`` and the next linear quantizes it with one static
scale per row. Inductor fuses the two into one elementwise kernel too, but with the scale
gathered by timestep group and CFG half and divided for every value, and tanh from
libdevice; at PixArt's 8192 x 4608 that kernel took 66.5 us on an H100 against 56.3 for
GELU alone in bf16, although it writes half the bytes
(``docs/bench/fused-quant-probe-h100.json``). Here the per-row reciprocal is read once per
program and GELU is ``x * sigmoid(2u)``, the same function as ``0.5 x (1 + tanh u)`` with
one exponential.

FLUX's single-stream blocks feed ``proj_out`` with ``cat([attention, GELU(mlp)])``
quantized: Inductor's kernel for it took 172 us a block on an H100 at 4608 x 15360 (6.5 ms
a step, ``docs/bench/flux-dev-1024-static-h100.json``), about 1.2 TB/s. ``cat_gelu_quant``
writes the same codes from the two inputs in place, the prefix columns without GELU.

``gelu_quant_reference`` / ``cat_gelu_quant_reference`` are the oracles
(``torch.nn.functional.gelu(approximate="tanh")``). Importing this module never needs
Triton.
"""

from __future__ import annotations

import torch

from trdq.kernels.launch import TRITON_LAUNCH_LOCK
from trdq.kernels.oplib import define_op
from trdq.kernels.triton_rotate_quant import E4M3_MAX, TRITON_AVAILABLE

__all__ = [
    "cat_gelu_quant", "cat_gelu_quant_reference", "cat_gelu_quant_triton",
    "gelu_quant", "gelu_quant_reference", "gelu_quant_triton",
]

#: columns per program: one row's slice, contiguous loads and stores
BLOCK_COLS = 1024


def _check(x: torch.Tensor, inverse_row_scale: torch.Tensor,
           prefix: torch.Tensor | None = None) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [rows, features], got {tuple(x.shape)}")
    if inverse_row_scale.numel() != x.shape[0]:
        raise ValueError(
            f"inverse_row_scale must hold one value per row ({x.shape[0]}), "
            f"got {inverse_row_scale.numel()}"
        )
    if prefix is not None and (prefix.dim() != 2 or prefix.shape[0] != x.shape[0]):
        raise ValueError(f"prefix must be [{x.shape[0]}, features] like x's rows, "
                         f"got {tuple(prefix.shape)}")


def cat_gelu_quant_reference(
    prefix: torch.Tensor, x: torch.Tensor, inverse_row_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> torch.Tensor:
    """Pure-torch oracle: e4m3 codes of ``cat([prefix, gelu_tanh(x)], 1) *
    inverse_row_scale[:, None]`` (``out_dtype`` float32: the clamped values before the
    cast, for tests)."""
    _check(x, inverse_row_scale, prefix)
    y = torch.cat([prefix.float(), torch.nn.functional.gelu(x.float(), approximate="tanh")], 1)
    v = y * inverse_row_scale.float().reshape(-1, 1)
    return torch.clamp(v, -E4M3_MAX, E4M3_MAX).to(out_dtype)


def gelu_quant_reference(
    x: torch.Tensor, inverse_row_scale: torch.Tensor, out_dtype: torch.dtype = torch.float8_e4m3fn
) -> torch.Tensor:
    """Pure-torch oracle: e4m3 codes of ``gelu_tanh(x) * inverse_row_scale[:, None]``
    (``out_dtype`` float32: the clamped values before the cast, for tests)."""
    return cat_gelu_quant_reference(x[:, :0], x, inverse_row_scale, out_dtype)


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _gelu_quant_kernel(prefix_ptr, x_ptr, inverse_ptr, q_ptr, prefix_cols, cols,
                           prefix_stride, x_stride, BLOCK: tl.constexpr, E4M3: tl.constexpr):
        """Program (row, slice): BLOCK columns of one row, its reciprocal scale read once.
        The first ``cdiv(prefix_cols, BLOCK)`` slices copy the prefix, the others apply
        GELU to x and write after it."""
        row = tl.program_id(0).to(tl.int64)
        piece = tl.program_id(1)
        prefix_pieces = tl.cdiv(prefix_cols, BLOCK)
        offs = tl.arange(0, BLOCK)
        inverse = tl.load(inverse_ptr + row)
        out_row = q_ptr + row * (prefix_cols + cols)
        if piece < prefix_pieces:
            offs_c = piece * BLOCK + offs
            mask = offs_c < prefix_cols
            y = tl.load(prefix_ptr + row * prefix_stride + offs_c, mask=mask,
                        other=0.0).to(tl.float32)
            out_offs = offs_c
        else:
            offs_c = (piece - prefix_pieces) * BLOCK + offs
            mask = offs_c < cols
            x = tl.load(x_ptr + row * x_stride + offs_c, mask=mask, other=0.0).to(tl.float32)
            # 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3)
            y = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
            out_offs = prefix_cols + offs_c
        v = tl.minimum(tl.maximum(y * inverse, -E4M3), E4M3)
        tl.store(out_row + out_offs, v.to(q_ptr.dtype.element_ty), mask=mask)


def _rows_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit column stride (rows may be strided, as a slice of a wider output)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def cat_gelu_quant_triton(
    prefix: torch.Tensor, x: torch.Tensor, inverse_row_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> torch.Tensor:
    """The Triton kernel (a CUDA device, or the interpreter with ``out_dtype`` float32)."""
    _check(x, inverse_row_scale, prefix)
    prefix_cols = prefix.shape[1]
    prefix, x = _rows_view(prefix), _rows_view(x)
    rows, cols = x.shape
    q = torch.empty(rows, prefix_cols + cols, device=x.device, dtype=out_dtype)
    grid = (rows, triton.cdiv(prefix_cols, BLOCK_COLS) + triton.cdiv(cols, BLOCK_COLS))
    with TRITON_LAUNCH_LOCK:
        _gelu_quant_kernel[grid](
            prefix, x, inverse_row_scale.float().contiguous(), q, prefix_cols, cols,
            prefix.stride(0), x.stride(0), BLOCK=BLOCK_COLS, E4M3=E4M3_MAX, num_warps=4,
        )
    return q


def gelu_quant_triton(
    x: torch.Tensor, inverse_row_scale: torch.Tensor, out_dtype: torch.dtype = torch.float8_e4m3fn
) -> torch.Tensor:
    """The Triton kernel without a prefix."""
    return cat_gelu_quant_triton(x[:, :0], x, inverse_row_scale, out_dtype)


def _cat_gelu_quant(prefix: torch.Tensor, x: torch.Tensor,
                    inverse_row_scale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes ``[M, P + N]`` of ``cat([prefix, gelu_tanh(x)])`` scaled by
    ``inverse_row_scale [M]`` (the consuming layer's reciprocal static scales): the Triton
    kernel on CUDA, the reference elsewhere."""
    if x.is_cuda and TRITON_AVAILABLE:
        return cat_gelu_quant_triton(prefix, x, inverse_row_scale)
    return cat_gelu_quant_reference(prefix, x, inverse_row_scale)


def _gelu_quant(x: torch.Tensor, inverse_row_scale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes ``[M, N]`` of ``gelu_tanh(x)`` scaled by ``inverse_row_scale [M]``."""
    return _cat_gelu_quant(x[:, :0], x, inverse_row_scale)


def _cat_gelu_quant_fake(prefix, x, inverse_row_scale):
    return x.new_empty((x.shape[0], prefix.shape[1] + x.shape[1]), dtype=torch.float8_e4m3fn)


def _gelu_quant_fake(x, inverse_row_scale):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn)


#: ``torch.ops.trdq.gelu_quant``: ``_gelu_quant`` as one opaque operator to torch.compile
gelu_quant = define_op("trdq::gelu_quant", _gelu_quant, _gelu_quant_fake)
#: ``torch.ops.trdq.cat_gelu_quant``: ``_cat_gelu_quant`` as one opaque operator
cat_gelu_quant = define_op("trdq::cat_gelu_quant", _cat_gelu_quant, _cat_gelu_quant_fake)
