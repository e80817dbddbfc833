"""tanh GELU and the next linear's e4m3 activation quantizer in one pass: ``gelu_quant``.

Why: inside a fused feed-forward (``trdq.nn.fused_block``) the hidden activation is
``GELU(x W1^T + b1)`` and ``ff.net[2]`` quantizes it with one static scale per row. Inductor
fuses the two into one elementwise kernel too, but with the scale gathered by timestep
group and CFG half and divided for every value, and tanh from libdevice; at PixArt's
8192 x 4608 that kernel took 66.5 us on an H100 against 56.3 for GELU alone in bf16,
although it writes half the bytes (``docs/bench/fused-quant-probe-h100.json``). Here the
per-row reciprocal is read once per program and GELU is ``x * sigmoid(2u)``, the same
function as ``0.5 x (1 + tanh u)`` with one exponential. Not yet timed on a GPU.

``gelu_quant_reference`` is the oracle (``torch.nn.functional.gelu(approximate="tanh")``).
Importing this module never needs Triton.
"""

from __future__ import annotations

import torch

from trdq.kernels.launch import TRITON_LAUNCH_LOCK
from trdq.kernels.oplib import define_op
from trdq.kernels.triton_rotate_quant import E4M3_MAX, TRITON_AVAILABLE

__all__ = ["gelu_quant", "gelu_quant_reference", "gelu_quant_triton"]

#: columns per program: one row's slice, contiguous loads and stores
BLOCK_COLS = 1024


def _check(x: torch.Tensor, inverse_row_scale: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [rows, features], got {tuple(x.shape)}")
    if inverse_row_scale.numel() != x.shape[0]:
        raise ValueError(
            f"inverse_row_scale must hold one value per row ({x.shape[0]}), "
            f"got {inverse_row_scale.numel()}"
        )


def gelu_quant_reference(
    x: torch.Tensor, inverse_row_scale: torch.Tensor, out_dtype: torch.dtype = torch.float8_e4m3fn
) -> torch.Tensor:
    """Pure-torch oracle: e4m3 codes of ``gelu_tanh(x) * inverse_row_scale[:, None]``
    (``out_dtype`` float32: the clamped values before the cast, for tests)."""
    _check(x, inverse_row_scale)
    y = torch.nn.functional.gelu(x.float(), approximate="tanh")
    v = y * inverse_row_scale.float().reshape(-1, 1)
    return torch.clamp(v, -E4M3_MAX, E4M3_MAX).to(out_dtype)


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _gelu_quant_kernel(x_ptr, inverse_ptr, q_ptr, cols, BLOCK: tl.constexpr,
                           E4M3: tl.constexpr):
        """Program (row, slice): BLOCK columns of one row, its reciprocal scale read once."""
        row = tl.program_id(0)
        offs_c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs_c < cols
        offs = row.to(tl.int64) * cols + offs_c
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3)
        y = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
        v = y * tl.load(inverse_ptr + row)
        v = tl.minimum(tl.maximum(v, -E4M3), E4M3)
        tl.store(q_ptr + offs, v.to(q_ptr.dtype.element_ty), mask=mask)


def gelu_quant_triton(
    x: torch.Tensor, inverse_row_scale: torch.Tensor, out_dtype: torch.dtype = torch.float8_e4m3fn
) -> torch.Tensor:
    """The Triton kernel (a CUDA device, or the interpreter with ``out_dtype`` float32)."""
    _check(x, inverse_row_scale)
    x = x.contiguous()
    rows, cols = x.shape
    q = torch.empty(rows, cols, device=x.device, dtype=out_dtype)
    with TRITON_LAUNCH_LOCK:
        _gelu_quant_kernel[(rows, triton.cdiv(cols, BLOCK_COLS))](
            x, inverse_row_scale.float().contiguous(), q, cols,
            BLOCK=BLOCK_COLS, E4M3=E4M3_MAX, num_warps=4,
        )
    return q


def _gelu_quant(x: torch.Tensor, inverse_row_scale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes ``[M, N]`` of ``gelu_tanh(x)`` scaled by ``inverse_row_scale [M]`` (the
    consuming layer's reciprocal static scales): the Triton kernel on CUDA, the reference
    elsewhere."""
    if x.is_cuda and TRITON_AVAILABLE:
        return gelu_quant_triton(x, inverse_row_scale)
    return gelu_quant_reference(x, inverse_row_scale)


def _gelu_quant_fake(x, inverse_row_scale):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn)


#: ``torch.ops.trdq.gelu_quant``: ``_gelu_quant`` as one opaque operator to torch.compile
gelu_quant = define_op("trdq::gelu_quant", _gelu_quant, _gelu_quant_fake)
