"""Quantized self-attention for Hopper: Q K^T in int8, P V in e4m3 (or bf16).

Why: attention is the largest single item of a PixArt-1024 step on an H100
(docs/KERNELS.md) and the linear layers' low-bit GEMMs cannot move the end-to-end time
while it stays in bf16.

Status: correct, but on an H100 slower than PyTorch's bf16 cuDNN attention
(docs/KERNELS.md, "Tried and not adopted"), so no preset uses it; it is kept with its
tests and microbenchmark rows as the starting point of that lever.

Quantization (all scales float32, ``x ~= x_q * scale``):
- Q: int8, one scale per query row (token), taken inside the attention kernel from the
  bf16 tile it loads anyway, so Q never goes to memory quantized;
- K: centred first (the mean over keys, per head and channel, is subtracted: it adds the
  same ``q . mean`` to every logit of a query row, which softmax ignores) then int8 with
  one scale per block of ``KV_BLOCK`` keys. int8 rather than e4m3 because the logits'
  error is what softmax amplifies: on Gaussian test data e4m3 Q/K give ~22 dB to exact
  attention, int8 with centring ~37-40 dB;
- V: e4m3 with one scale per block of keys, stored transposed (the K-major layout the FP8
  tensor-core instruction wants for the second matmul); ``pv_fp8=False`` keeps P V in bf16;
- P (the softmax numerator, in (0, 1] after subtracting the running row max): in the e4m3
  mode scaled by ``P_SCALE`` = 256 before the cast so small probabilities stay normal;
  the row sums use the unquantized P.
A small pre-pass (``_quantize_kv_kernel``) writes K and V once; the attention kernel then
reads them once per query block.

Head dims that are not a power of two (PixArt and Latte use 72) are split into a 64-wide
and a 32-wide chunk (``head_dim_split``), so the padded work is 96 columns, not 128.

``quant_attention_reference`` is the pure-torch oracle of the same quantization (with the
global row max instead of the running one, the only difference); the Triton kernel is
tested against it on the GPU and the oracle against exact attention on the CPU.
Importing this module never needs Triton.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from trdq import primitives as P
from trdq.kernels.launch import TRITON_LAUNCH_LOCK, autotune_gpu_time, launch_triton

__all__ = [
    "KV_BLOCK",
    "P_SCALE",
    "TRITON_AVAILABLE",
    "head_dim_split",
    "quant_attention_reference",
    "quant_attention_triton",
]

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None

KV_BLOCK = 64  # keys per K/V scale (and per inner-loop step of the kernel)
P_SCALE = 256.0  # softmax numerators in (0, 1] are cast as P * 256 (e4m3 max 448)
INT8_MAX = 127.0
_LOG2E = 1.4426950408889634


def head_dim_split(head_dim: int) -> tuple[int, int]:
    """(D_LO, D_HI): the power-of-two chunks (each >= 32, the 8-bit dot's minimum K) that
    cover ``head_dim``; D_HI is 0 when one chunk does."""
    if head_dim <= 0:
        raise ValueError(f"head_dim must be positive, got {head_dim}")
    if head_dim <= 64:
        return max(32, 1 << (head_dim - 1).bit_length()), 0
    if head_dim > 128:
        raise ValueError(f"head_dim {head_dim} > 128 is not supported")
    return 64, max(32, 1 << (head_dim - 64 - 1).bit_length())


def _per_key_block(x: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., S, D]`` -> blocks ``[..., S/KV_BLOCK, KV_BLOCK, D]`` (zero-padded) and one
    scale per block (absmax / qmax)."""
    pad = (-x.shape[-2]) % KV_BLOCK
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad))
    xb = xp.unflatten(-2, (xp.shape[-2] // KV_BLOCK, KV_BLOCK))
    return xb, (xb.abs().amax(dim=(-2, -1), keepdim=True) / qmax).clamp_min(P.MIN_SCALE)


def quant_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
    *, pv_fp8: bool = True,
) -> torch.Tensor:
    """softmax(Q K^T * scale) V on ``[B, H, S, D]`` with the kernel's quantization,
    computed in float32 (the oracle; runs anywhere)."""
    seq = q.shape[-2]
    qf, kf, vf = (t.float() for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_scale = (qf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp_min(P.MIN_SCALE)
    q_fake = P.fake_quant_symmetric(qf, q_scale, 8)
    kb, k_scale = _per_key_block(kf - kf.mean(dim=-2, keepdim=True), INT8_MAX)
    k_fake = P.fake_quant_symmetric(kb, k_scale, 8).flatten(-3, -2)[..., :seq, :]
    logits = (q_fake @ k_fake.transpose(-1, -2)) * scale
    p = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    if pv_fp8:
        vb, v_scale = _per_key_block(vf, P.FP8_E4M3_MAX)
        v_fake = P.fake_quant_fp8(vb, v_scale).flatten(-3, -2)[..., :seq, :]
        numerator = P.fake_quant_fp8(p, torch.tensor(1.0 / P_SCALE)) @ v_fake
    else:
        numerator = p.to(q.dtype).float() @ vf
    return (numerator / p.sum(dim=-1, keepdim=True)).to(q.dtype)


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    from trdq.kernels.triton_rotate_quant_math import round_half_even_int8

    @triton.jit
    def _quantize_kv_kernel(
        k_ptr, k_mean_ptr, v_ptr, k8_ptr, v8_ptr, k_scale_ptr, v_scale_ptr,
        S, H, D, SP, NB,
        stride_kb, stride_kh, stride_ks, stride_kd,
        stride_vb, stride_vh, stride_vs, stride_vd,
        DP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, V_FP8: tl.constexpr,
    ):
        """One program per (key block, batch x head): centred K block -> int8 ``[SP, DP]``
        rows; V block -> e4m3 transposed ``[DP, SP]`` (or a bf16 ``[SP, DP]`` copy); one
        scale each; padding written as 0."""
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        d = tl.arange(0, BLOCK_D)
        inside = (n[:, None] < S) & (d[None, :] < D)
        stored = d[None, :] < DP

        k = tl.load(k_ptr + b * stride_kb + h * stride_kh + n[:, None] * stride_ks
                    + d[None, :] * stride_kd, mask=inside, other=0.0).to(tl.float32)
        k_mean = tl.load(k_mean_ptr + pid_bh * D + d, mask=d < D, other=0.0)
        k = tl.where(inside, k - k_mean[None, :], 0.0)
        k_scale = tl.maximum(tl.max(tl.max(tl.abs(k), axis=1), axis=0) / 127.0, 1e-8)
        k8 = round_half_even_int8(k / k_scale)
        tl.store(k8_ptr + pid_bh * SP * DP + n[:, None] * DP + d[None, :], k8, mask=stored)
        tl.store(k_scale_ptr + pid_bh * NB + pid_n, k_scale)

        v = tl.load(v_ptr + b * stride_vb + h * stride_vh + n[:, None] * stride_vs
                    + d[None, :] * stride_vd, mask=inside, other=0.0)
        if V_FP8:
            v = v.to(tl.float32)
            v_scale = tl.maximum(tl.max(tl.max(tl.abs(v), axis=1), axis=0) / 448.0, 1e-8)
            v8 = (v / v_scale).to(tl.float8e4nv)
            tl.store(v8_ptr + pid_bh * DP * SP + d[None, :] * SP + n[:, None], v8, mask=stored)
            tl.store(v_scale_ptr + pid_bh * NB + pid_n, v_scale)
        else:
            tl.store(v8_ptr + pid_bh * SP * DP + n[:, None] * DP + d[None, :], v, mask=stored)

    @triton.jit
    def _quant_attention_kernel(
        q_ptr, k8_ptr, v8_ptr, k_scale_ptr, v_scale_ptr, o_ptr,
        S, H, D, SP, NB, qk_scale,
        stride_qb, stride_qh, stride_qs, stride_qd,
        stride_ob, stride_oh, stride_os, stride_od,
        D_LO: tl.constexpr, D_HI: tl.constexpr, P_SCALE: tl.constexpr, V_FP8: tl.constexpr,
        EVEN_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program per (query block, batch x head): online softmax over key blocks,
        Q K^T as an int8 dot (int32 accumulation), P V as an e4m3 (or bf16) dot."""
        DP: tl.constexpr = D_LO + D_HI
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        d_lo = tl.arange(0, D_LO)
        d_hi = D_LO + tl.arange(0, max(D_HI, 1))
        q_base = q_ptr + b * stride_qb + h * stride_qh + m[:, None] * stride_qs

        # Q: per-row int8 scale from the loaded tile, quantized in registers
        q_lo = tl.load(q_base + d_lo[None, :] * stride_qd,
                       mask=(m[:, None] < S) & (d_lo[None, :] < D), other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(q_lo), axis=1)
        if D_HI > 0:
            q_hi = tl.load(q_base + d_hi[None, :] * stride_qd,
                           mask=(m[:, None] < S) & (d_hi[None, :] < D), other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(q_hi), axis=1))
        q_scale = tl.maximum(amax / 127.0, 1e-8)
        q8_lo = round_half_even_int8(q_lo / q_scale[:, None])
        if D_HI > 0:
            q8_hi = round_half_even_int8(q_hi / q_scale[:, None])
        row_factor = q_scale * qk_scale  # log2 domain: qk_scale includes log2(e)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc_lo = tl.zeros([BLOCK_M, D_LO], tl.float32)
        if D_HI > 0:
            acc_hi = tl.zeros([BLOCK_M, D_HI], tl.float32)
        k_base = k8_ptr + pid_bh * SP * DP
        v_base = v8_ptr + pid_bh * DP * SP
        for start in range(0, SP, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            k_lo = tl.load(k_base + n[:, None] * DP + d_lo[None, :])
            s_int = tl.dot(q8_lo, tl.trans(k_lo), out_dtype=tl.int32)
            if D_HI > 0:
                k_hi = tl.load(k_base + n[:, None] * DP + d_hi[None, :])
                s_int = tl.dot(q8_hi, tl.trans(k_hi), s_int, out_dtype=tl.int32)
            k_scale = tl.load(k_scale_ptr + pid_bh * NB + start // BLOCK_N)
            s = s_int.to(tl.float32) * (row_factor * k_scale)[:, None]
            if not EVEN_N:
                s = tl.where(n[None, :] < S, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if V_FP8:
                p8 = (p * P_SCALE).to(tl.float8e4nv)
                v_factor = tl.load(v_scale_ptr + pid_bh * NB + start // BLOCK_N) / P_SCALE
                v_lo = tl.load(v_base + d_lo[:, None] * SP + n[None, :])
                acc_lo = acc_lo * alpha[:, None] + tl.dot(p8, tl.trans(v_lo)) * v_factor
                if D_HI > 0:
                    v_hi = tl.load(v_base + d_hi[:, None] * SP + n[None, :])
                    acc_hi = acc_hi * alpha[:, None] + tl.dot(p8, tl.trans(v_hi)) * v_factor
            else:
                p16 = p.to(v8_ptr.dtype.element_ty)
                v_lo = tl.load(v_base + n[:, None] * DP + d_lo[None, :])
                acc_lo = tl.dot(p16, v_lo, acc_lo * alpha[:, None])
                if D_HI > 0:
                    v_hi = tl.load(v_base + n[:, None] * DP + d_hi[None, :])
                    acc_hi = tl.dot(p16, v_hi, acc_hi * alpha[:, None])
            m_i = m_new

        o_base = o_ptr + b * stride_ob + h * stride_oh + m[:, None] * stride_os
        tl.store(o_base + d_lo[None, :] * stride_od,
                 (acc_lo / l_i[:, None]).to(o_ptr.dtype.element_ty),
                 mask=(m[:, None] < S) & (d_lo[None, :] < D))
        if D_HI > 0:
            tl.store(o_base + d_hi[None, :] * stride_od,
                     (acc_hi / l_i[:, None]).to(o_ptr.dtype.element_ty),
                     mask=(m[:, None] < S) & (d_hi[None, :] < D))

    _quant_attention_autotuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=st)
            # the fastest of 8 tiles tried on an H100 at PixArt/Latte shapes (docs/journal/)
            for bm, w, st in ((64, 4, 3), (64, 4, 4), (128, 8, 3))
        ],
        key=["S", "D_LO", "D_HI", "V_FP8"],
        do_bench=autotune_gpu_time,
    )(_quant_attention_kernel)


def quant_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
    *, pv_fp8: bool = True, block_m: int | None = None, num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """softmax(Q K^T * scale) V for bf16/fp16 CUDA ``[B, H, S, D]`` (any strides) with
    8-bit matmuls. The result is ``[B, H, S, D]``, a view of a ``[B, S, H, D]`` buffer, so
    ``out.transpose(1, 2).reshape(B, S, H * D)`` (what attention processors do next) is
    free. ``block_m`` pins the query tile instead of autotuning (tests, microbenchmarks)."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("quant_attention_triton needs Triton")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one [B, H, S, D] shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"quant_attention_triton takes bf16/fp16 CUDA tensors, got "
                         f"{q.dtype} on {q.device}")
    batch, heads, seq, head_dim = q.shape
    d_lo, d_hi = head_dim_split(head_dim)
    dp = d_lo + d_hi
    nb = triton.cdiv(seq, KV_BLOCK)
    sp = nb * KV_BLOCK
    dev = q.device
    k_mean = k.mean(dim=-2, dtype=torch.float32).contiguous()  # [B, H, D]
    k8 = torch.empty(batch * heads, sp, dp, device=dev, dtype=torch.int8)
    if pv_fp8:
        v8 = torch.empty(batch * heads, dp, sp, device=dev, dtype=torch.float8_e4m3fn)
    else:
        v8 = torch.empty(batch * heads, sp, dp, device=dev, dtype=q.dtype)
    k_scale = torch.empty(batch * heads, nb, device=dev, dtype=torch.float32)
    v_scale = torch.empty_like(k_scale)
    out = torch.empty(batch, seq, heads, head_dim, device=dev, dtype=q.dtype).transpose(1, 2)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    tile = None
    if block_m is not None:
        tile = {"BLOCK_M": block_m, "num_warps": num_warps, "num_stages": num_stages}
    with TRITON_LAUNCH_LOCK:
        _quantize_kv_kernel[(nb, batch * heads)](
            k, k_mean, v, k8, v8, k_scale, v_scale, seq, heads, head_dim, sp, nb,
            *k.stride(), *v.stride(),
            DP=dp, BLOCK_D=triton.next_power_of_2(dp), BLOCK_N=KV_BLOCK, V_FP8=pv_fp8,
            num_warps=4,
        )
    launch_triton(
        _quant_attention_autotuned,
        lambda cfg: (triton.cdiv(seq, cfg["BLOCK_M"]), batch * heads),
        (q, k8, v8, k_scale, v_scale, out, seq, heads, head_dim, sp, nb, scale * _LOG2E,
         *q.stride(), *out.stride()),
        {"D_LO": d_lo, "D_HI": d_hi, "P_SCALE": P_SCALE, "V_FP8": pv_fp8,
         "EVEN_N": seq % KV_BLOCK == 0, "BLOCK_N": KV_BLOCK},
        tile,
    )
    return out
