"""Q, K and V to FA3's e4m3 operands with fixed statistics, in one launch:
``attention_inputs_e4m3``.

Why: with static statistics (``trdq.nn.static_attention``) what is left of FP8 attention's
quantization is three elementwise casts, and Inductor's kernels for them ran far from the
memory bandwidth on an H100: 0.71 ms a step each on PixArt-1024 (``[2, 4096, 16, 72]``
bf16 in, head dim padded to 80 out: ~0.6 TB/s), ~3 ms each at Latte-512's frames
(``docs/bench/pixart-alpha-1024-static-h100.json``, ``latte-512-16f-fusedqkv-h100.json``).
Here each program casts a tile of rows x output channels of one tensor, the channels
being all heads' padded head dims side by side (``H * Dp``): its loads of a row are one
contiguous run of the projection's output and its stores one contiguous run of the codes.
The first version (a program per block of rows of one head: 144-byte loads and 80-byte
stores at a stride of a row) took 68 us a call on PixArt-1024 (H100, 1.9 ms a step,
``pixart-alpha-1024-t5cg-h100.json``), ~0.6 TB/s, no better than Inductor's three kernels.
The per-(tensor, batch, head) scales and means are gathered per element (a few KB, from
the cache). Opt-in until timed on a GPU (``fa3_attention.set_triton_cast``, bench
``+tritoncast``).

The arithmetic, per tensor t in (Q, K, V), batch b, head h, channel d (float32; the oracle
is ``fa3_attention.e4m3_codes``, which this must equal code for code):

    code = e4m3(clamp((x - mean[t, b, h, d]) / scale[t, b, h], -448, 448))   for d < D
    code = 0                                                                 for D <= d < Dp

``scale`` and ``mean`` ``[3, B, H]`` / ``[3, B, H, D]`` (Q's mean zero); ``Dp`` is D rounded
up to FA3's multiple of 16. Output ``[3, B, S, H, Dp]``: three contiguous operands.
Importing this module never needs Triton.
"""

from __future__ import annotations

import torch

from trdq.kernels.fa3_attention import FP8_HEAD_DIM_MULTIPLE, e4m3_codes
from trdq.kernels.launch import TRITON_LAUNCH_LOCK, next_pow2
from trdq.kernels.oplib import define_op
from trdq.kernels.triton_rotate_quant import E4M3_MAX, TRITON_AVAILABLE

__all__ = ["attention_inputs_e4m3", "attention_inputs_e4m3_reference",
           "attention_inputs_e4m3_triton", "padded_head_dim"]

#: rows (batch x tokens) per program
BLOCK_ROWS = 32
#: output channels (heads x padded head dim, flattened) per program
BLOCK_CHANNELS = 256


def padded_head_dim(head_dim: int) -> int:
    return -(-head_dim // FP8_HEAD_DIM_MULTIPLE) * FP8_HEAD_DIM_MULTIPLE


def _check(q, k, v, scale, mean) -> tuple[int, int, int, int]:
    """(batch, tokens, heads, head dim) of ``q [B, S, H, D]``, after checking the rest."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be one [B, S, H, D] shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    batch, tokens, heads, dim = q.shape
    if scale.shape != (3, batch, heads) or mean.shape != (3, batch, heads, dim):
        raise ValueError(f"scale must be [3, {batch}, {heads}] and mean [3, {batch}, {heads}, "
                         f"{dim}], got {tuple(scale.shape)} and {tuple(mean.shape)}")
    return batch, tokens, heads, dim


def attention_inputs_e4m3_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> torch.Tensor:
    """Pure-torch oracle ``[3, B, S, H, Dp]``: ``fa3_attention.e4m3_codes`` of each
    (``out_dtype`` float32: the clamped values before the cast, for tests)."""
    _check(q, k, v, scale, mean)
    return torch.stack([e4m3_codes(x, scale[t], mean[t, :, None], out_dtype)
                        for t, x in enumerate((q, k, v))])


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _attention_inputs_e4m3_kernel(
        q_ptr, k_ptr, v_ptr, scale_ptr, mean_ptr, out_ptr,
        rows, tokens, heads, head_dim, stride_b, stride_s, stride_h,
        PADDED: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
        E4M3: tl.constexpr,
    ):
        """Program (row block, channel block, tensor): BLOCK_ROWS rows x BLOCK_C of the
        ``heads * PADDED`` output channels of Q, K or V."""
        t = tl.program_id(2)
        r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        h = c // PADDED  # [BLOCK_C]: each output channel's head and channel in the head
        d = c % PADDED
        b = r // tokens
        s = r % tokens
        row_ok = r < rows
        col_ok = h < heads
        real = col_ok & (d < head_dim)  # not padding
        tile_ok = row_ok[:, None] & col_ok[None, :]
        load_mask = row_ok[:, None] & real[None, :]
        offs = (b.to(tl.int64)[:, None] * stride_b + s.to(tl.int64)[:, None] * stride_s
                + (h * stride_h + d)[None, :])
        if t == 0:
            x = tl.load(q_ptr + offs, mask=load_mask, other=0.0)
        elif t == 1:
            x = tl.load(k_ptr + offs, mask=load_mask, other=0.0)
        else:
            x = tl.load(v_ptr + offs, mask=load_mask, other=0.0)
        batch = rows // tokens
        stat = (t * batch + b)[:, None] * heads + h[None, :]  # the (tensor, batch, head)
        scale = tl.load(scale_ptr + stat, mask=tile_ok, other=1.0)
        mean = tl.load(mean_ptr + stat * head_dim + d[None, :], mask=load_mask, other=0.0)
        y = (x.to(tl.float32) - mean) / scale
        y = tl.minimum(tl.maximum(y, -E4M3), E4M3)
        y = tl.where(real[None, :], y, 0.0)
        out = (t * rows + r.to(tl.int64))[:, None] * (heads * PADDED) + c[None, :]
        tl.store(out_ptr + out, y.to(out_ptr.dtype.element_ty), mask=tile_ok)


def attention_inputs_e4m3_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> torch.Tensor:
    """The Triton kernel (a CUDA device, or the interpreter with ``out_dtype`` float32).
    Q, K and V may be strided views (the fused projection's output chunks) as long as
    they share their strides and their channels are contiguous."""
    batch, tokens, heads, dim = _check(q, k, v, scale, mean)
    if not (q.stride() == k.stride() == v.stride() and q.stride(-1) == 1):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    padded = padded_head_dim(dim)
    rows = batch * tokens
    out = torch.empty(3, batch, tokens, heads, padded, device=q.device, dtype=out_dtype)
    block_channels = min(BLOCK_CHANNELS, next_pow2(heads * padded))
    grid = (triton.cdiv(rows, BLOCK_ROWS), triton.cdiv(heads * padded, block_channels), 3)
    with TRITON_LAUNCH_LOCK:
        _attention_inputs_e4m3_kernel[grid](
            q, k, v, scale.float().contiguous(), mean.float().contiguous(), out,
            rows, tokens, heads, dim, q.stride(0), q.stride(1), q.stride(2),
            PADDED=padded, BLOCK_ROWS=BLOCK_ROWS, BLOCK_C=block_channels, E4M3=E4M3_MAX,
            num_warps=4,
        )
    return out


def _attention_inputs_e4m3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           scale: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """e4m3 codes ``[3, B, S, H, Dp]`` of Q, K - mean, V - mean over ``scale``: the Triton
    kernel on CUDA, the reference elsewhere."""
    if q.is_cuda and TRITON_AVAILABLE:
        return attention_inputs_e4m3_triton(q, k, v, scale, mean)
    return attention_inputs_e4m3_reference(q, k, v, scale, mean)


def _attention_inputs_e4m3_fake(q, k, v, scale, mean):
    batch, tokens, heads, dim = q.shape
    return q.new_empty((3, batch, tokens, heads, padded_head_dim(dim)),
                       dtype=torch.float8_e4m3fn)


#: ``torch.ops.trdq.attention_inputs_e4m3``: one opaque operator to torch.compile
attention_inputs_e4m3 = define_op("trdq::attention_inputs_e4m3", _attention_inputs_e4m3,
                                  _attention_inputs_e4m3_fake)
