"""FLUX's attention prologue in one launch: Q/K RMSNorm, rotary embedding and the e4m3 casts
of Q, K and V with fixed statistics: ``norm_rope_e4m3``.

Why: with static FP8 attention (``trdq.nn.static_attention``) a FLUX.1-dev-1024 step still
spent ~8 ms (of 92) between the Q/K/V projection and FA3 on an H100: Inductor fuses the
q/k RMSNorm, the interleaved rotary embedding and the casts into reduction kernels that ran
at ~0.8 TB/s (109 us a single-stream block for Q and K;
``docs/bench/flux-dev-1024-static-h100.json``). Here one program reads a block of rows of
one head of Q, K and V once and writes their codes.

Per batch b, token s, head h, channel pair (2i, 2i+1), in float32 (the oracle is
``norm_rope_e4m3_reference``, diffusers' arithmetic without its bf16 roundings between the
steps):

    n    = x * rsqrt(mean_d(x^2) + eps) * w          (Q and K; w: the stream's norm weight)
    r_2i   = n_2i * cos_2i - n_2i+1 * sin_2i         (Q and K; cos, sin: [S, D], interleaved)
    r_2i+1 = n_2i+1 * cos_2i+1 + n_2i * sin_2i+1
    code = e4m3(clamp((r - mean[t, b, h]) / scale[t, b, h], -448, 448))   (V: r = x)

Two streams: a double-stream block attends over ``[text tokens; image tokens]`` with each
stream's own projection and norm weights; a single-stream block passes an empty text
stream. Each stream's ``qkv`` is its fused projection's output ``[B, S_stream, 3 * H * D]``
(q | k | v). Output ``[3, B, S_text + S_image, H, D]`` e4m3: FA3's three operands. Head
dims: powers of two from 16 (FLUX and SD3 128 / 64, no padding). Importing this module never
needs Triton.
"""

from __future__ import annotations

import torch

from trdq.kernels.fa3_attention import e4m3_codes
from trdq.kernels.launch import TRITON_LAUNCH_LOCK
from trdq.kernels.oplib import define_op
from trdq.kernels.triton_rotate_quant import E4M3_MAX, TRITON_AVAILABLE

__all__ = ["norm_rope_e4m3", "norm_rope_e4m3_reference", "norm_rope_e4m3_triton",
           "supported_head_dim"]

#: tokens per program
BLOCK_ROWS = 16


def supported_head_dim(head_dim: int) -> bool:
    """Whether the kernel takes this head dim (a power of two, 16 or more)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def _check(text_qkv, image_qkv, norm_weights, cos, sin, scale, mean, heads):
    """(batch, text tokens, image tokens, head dim), after checking the rest."""
    if text_qkv.dim() != 3 or image_qkv.dim() != 3 or text_qkv.shape[0] != image_qkv.shape[0]:
        raise ValueError(f"text_qkv and image_qkv must be [B, S, 3 * H * D] with one batch, "
                         f"got {tuple(text_qkv.shape)} and {tuple(image_qkv.shape)}")
    width = image_qkv.shape[-1]
    if width % (3 * heads) or (text_qkv.shape[1] and text_qkv.shape[-1] != width):
        raise ValueError(f"a fused projection's width must be 3 x {heads} heads x head dim, "
                         f"got {width} and {text_qkv.shape[-1]}")
    batch, dim = image_qkv.shape[0], width // (3 * heads)
    if not supported_head_dim(dim):
        raise ValueError(f"head dim {dim}: the kernel takes powers of two from 16")
    tokens = text_qkv.shape[1] + image_qkv.shape[1]
    if norm_weights.shape != (4, dim):
        raise ValueError(f"norm_weights must be [4, {dim}] (text q, text k, image q, image k), "
                         f"got {tuple(norm_weights.shape)}")
    if cos.shape != (tokens, dim) or sin.shape != (tokens, dim):
        raise ValueError(f"cos and sin must be [{tokens}, {dim}], got {tuple(cos.shape)}")
    if scale.shape != (3, batch, heads) or mean.shape != (3, batch, heads, dim):
        raise ValueError(f"scale must be [3, {batch}, {heads}] and mean [3, {batch}, {heads}, "
                         f"{dim}], got {tuple(scale.shape)} and {tuple(mean.shape)}")
    return batch, text_qkv.shape[1], image_qkv.shape[1], dim


def norm_rope_e4m3_reference(
    text_qkv: torch.Tensor, image_qkv: torch.Tensor, norm_weights: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
    heads: int, eps: float, out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> torch.Tensor:
    """Pure-torch oracle ``[3, B, S, H, D]`` (module docstring); ``norm_weights [4, D]``:
    text q, text k, image q, image k (``out_dtype`` float32: the clamped values before the
    cast, for tests)."""
    _, _, _, dim = _check(text_qkv, image_qkv, norm_weights, cos, sin, scale, mean, heads)
    w = norm_weights.float()

    def split(qkv):  # [B, S, 3HD] -> three [B, S, H, D] float32
        return qkv.float().unflatten(-1, (3, heads, dim)).unbind(2)

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    (tq, tk, tv), (iq, ik, iv) = split(text_qkv), split(image_qkv)
    q = torch.cat([rms(tq, w[0]), rms(iq, w[2])], 1)
    k = torch.cat([rms(tk, w[1]), rms(ik, w[3])], 1)
    v = torch.cat([tv, iv], 1)

    def rope(x):
        pairs = x.unflatten(-1, (dim // 2, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
        return x * cos.float()[None, :, None] + rotated * sin.float()[None, :, None]

    # the casts as static FP8 attention's (no padding: the head dims are multiples of 16)
    return torch.stack([e4m3_codes(x, scale[t].float(), mean[t, :, None].float(), out_dtype)
                        for t, x in enumerate((rope(q), rope(k), v))])


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _norm_rope_e4m3_kernel(
        text_ptr, image_ptr, weight_ptr, cos_ptr, sin_ptr, scale_ptr, mean_ptr, out_ptr,
        text_tokens, image_tokens, heads, text_stride_b, text_stride_s, image_stride_b,
        image_stride_s, eps,
        D: tl.constexpr, BLOCK_ROWS: tl.constexpr, E4M3: tl.constexpr,
    ):
        """Program (row block, head, batch): BLOCK_ROWS tokens of one stream, one head, Q,
        K and V. Row blocks below ``cdiv(text_tokens, BLOCK_ROWS)`` read the text stream."""
        h = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        text_blocks = tl.cdiv(text_tokens, BLOCK_ROWS)
        r = tl.arange(0, BLOCK_ROWS)
        batch = tl.num_programs(2)
        tokens = text_tokens + image_tokens
        if tl.program_id(0) < text_blocks:
            local = tl.program_id(0) * BLOCK_ROWS + r
            row_ok = local < text_tokens
            src = text_ptr + b * text_stride_b + local.to(tl.int64)[:, None] * text_stride_s
            token = local
            w_row = 0
        else:
            local = (tl.program_id(0) - text_blocks) * BLOCK_ROWS + r
            row_ok = local < image_tokens
            src = image_ptr + b * image_stride_b + local.to(tl.int64)[:, None] * image_stride_s
            token = text_tokens + local
            w_row = 2
        mask = row_ok[:, None]
        d = tl.arange(0, D)[None, :]
        # contiguous rows in and out; the rotation pairs channels (2i, 2i+1) in registers
        rope_offs = token.to(tl.int64)[:, None] * D + d
        cos = tl.load(cos_ptr + rope_offs, mask=mask, other=0.0)
        sin = tl.load(sin_ptr + rope_offs, mask=mask, other=0.0)
        for t in tl.static_range(3):
            x = tl.load(src + (t * heads + h) * D + d, mask=mask, other=0.0).to(tl.float32)
            if t < 2:  # Q and K: RMSNorm with the stream's weight, then the rotation
                rstd = tl.rsqrt(tl.sum(x * x, 1) / D + eps)
                x = x * rstd[:, None] * tl.load(weight_ptr + (w_row + t) * D + d)
                even, odd = tl.split(tl.reshape(x, [BLOCK_ROWS, D // 2, 2]))
                rotated = tl.reshape(tl.join(-odd, even), [BLOCK_ROWS, D])
                x = x * cos + rotated * sin
            stat = (t * batch + b) * heads + h
            inverse = 1.0 / tl.load(scale_ptr + stat)
            y = (x - tl.load(mean_ptr + stat * D + d)) * inverse
            y = tl.minimum(tl.maximum(y, -E4M3), E4M3)
            out = out_ptr + (((t * batch + b) * tokens + token.to(tl.int64)[:, None]) * heads
                             + h) * D
            tl.store(out + d, y.to(out_ptr.dtype.element_ty), mask=mask)


def norm_rope_e4m3_triton(
    text_qkv: torch.Tensor, image_qkv: torch.Tensor, norm_weights: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
    heads: int, eps: float, out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> torch.Tensor:
    """The Triton kernel (a CUDA device, or the interpreter with ``out_dtype`` float32).
    The streams' rows may be strided (channels contiguous)."""
    batch, text_tokens, image_tokens, dim = _check(text_qkv, image_qkv, norm_weights, cos, sin,
                                                   scale, mean, heads)
    if text_qkv.stride(-1) != 1:
        text_qkv = text_qkv.contiguous()
    if image_qkv.stride(-1) != 1:
        image_qkv = image_qkv.contiguous()
    tokens = text_tokens + image_tokens
    out = torch.empty(3, batch, tokens, heads, dim, device=image_qkv.device, dtype=out_dtype)
    grid = (triton.cdiv(text_tokens, BLOCK_ROWS) + triton.cdiv(image_tokens, BLOCK_ROWS),
            heads, batch)
    with TRITON_LAUNCH_LOCK:
        _norm_rope_e4m3_kernel[grid](
            text_qkv, image_qkv, norm_weights.float().contiguous(), cos.float().contiguous(),
            sin.float().contiguous(), scale.float().contiguous(), mean.float().contiguous(),
            out, text_tokens, image_tokens, heads, text_qkv.stride(0), text_qkv.stride(1),
            image_qkv.stride(0), image_qkv.stride(1), eps,
            D=dim, BLOCK_ROWS=BLOCK_ROWS, E4M3=E4M3_MAX, num_warps=4,
        )
    return out


def _norm_rope_e4m3(text_qkv: torch.Tensor, image_qkv: torch.Tensor, norm_weights: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                    heads: int, eps: float) -> torch.Tensor:
    """FA3's e4m3 operands ``[3, B, S, H, D]`` (module docstring): the Triton kernel on CUDA,
    the reference elsewhere."""
    if image_qkv.is_cuda and TRITON_AVAILABLE:
        return norm_rope_e4m3_triton(text_qkv, image_qkv, norm_weights, cos, sin, scale, mean,
                                     heads, eps)
    return norm_rope_e4m3_reference(text_qkv, image_qkv, norm_weights, cos, sin, scale, mean,
                                    heads, eps)


def _norm_rope_e4m3_fake(text_qkv, image_qkv, norm_weights, cos, sin, scale, mean, heads, eps):
    batch, tokens = image_qkv.shape[0], text_qkv.shape[1] + image_qkv.shape[1]
    dim = image_qkv.shape[-1] // (3 * heads)
    return image_qkv.new_empty((3, batch, tokens, heads, dim), dtype=torch.float8_e4m3fn)


#: ``torch.ops.trdq.norm_rope_e4m3``: one opaque operator to torch.compile
norm_rope_e4m3 = define_op("trdq::norm_rope_e4m3", _norm_rope_e4m3, _norm_rope_e4m3_fake)
