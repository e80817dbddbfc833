"""A few rows times an int8 weight with one scale per output channel: ``int8_gemv``.

Why: the denoiser's per-block adaLN projections (``trdq.nn.weight_only``) see one row per
sample a step, so their time is reading the weight. FLUX.1-dev's are 3.2 GB in int8
(3072 x 18432 in the double-stream blocks, 3072 x 9216 in the single-stream ones). On an
H100, dequantizing to bf16 and a cuBLAS GEMV took 5.9 ms a step; the same product written
as a reduction that Inductor fuses (``WeightOnlyLinear._reduced_forward``) 4.6 ms, ~0.7
TB/s (``docs/bench/flux-dev-1024-fusions-h100.json``). At the memory bandwidth it is
~1.2 ms. Here each program reads a block of ``BLOCK_N`` output channels' weight rows
once, in contiguous runs of ``BLOCK_K`` bytes, for every input row at once (``M`` is 1 or
2), and applies the scale and bias at the end. The tile is tuned per shape on the first
call (GPU time from a graph, ``trdq.kernels.launch.autotune_gpu_time``), before any capture.

Notation: ``x [M, K]`` (M <= ``MAX_ROWS``), ``qweight [N, K]`` int8, ``scale [N]`` float32,
``bias [N]`` or None; out ``[M, N]`` in x's dtype, accumulated in float32:

    out[m, n] = scale[n] * sum_k x[m, k] * qweight[n, k] + bias[n]

``int8_gemv_reference`` is the oracle. Importing this module never needs Triton.
"""

from __future__ import annotations

import torch

from trdq.kernels.launch import autotune_gpu_time, launch_triton
from trdq.kernels.oplib import define_op
from trdq.kernels.triton_rotate_quant import TRITON_AVAILABLE

__all__ = ["MAX_ROWS", "int8_gemv", "int8_gemv_reference", "int8_gemv_triton"]

#: input rows the kernel takes (one per sample, two under a CFG batch)
MAX_ROWS = 2
#: (output channels per program, weight bytes per row per load, warps) the autotuner tries:
#: FLUX's 9216 outputs in blocks of 32 make 288 programs, about two per H100 SM
TILES = ((32, 512, 4), (16, 512, 4), (32, 256, 4), (64, 256, 4), (64, 128, 4), (16, 1024, 8))


def _check(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
           bias: torch.Tensor | None) -> None:
    if x.dim() != 2 or not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"x must be [M, K] with 1 <= M <= {MAX_ROWS}, got {tuple(x.shape)}")
    if qweight.dtype != torch.int8 or qweight.dim() != 2 or qweight.shape[1] != x.shape[1]:
        raise ValueError(f"qweight must be int8 [N, {x.shape[1]}], got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    n = qweight.shape[0]
    if scale.shape != (n,) or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"scale and bias must be [{n}], got {tuple(scale.shape)} and "
                         f"{None if bias is None else tuple(bias.shape)}")


def int8_gemv_reference(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """Pure-torch oracle (float32 arithmetic)."""
    _check(x, qweight, scale, bias)
    out = (x.float() @ qweight.float().t()) * scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _int8_gemv_kernel(
        x_ptr, q_ptr, scale_ptr, bias_ptr, out_ptr, n_out, k_in, stride_xm, stride_qn,
        M: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """Program: BLOCK_N output channels for all M (1 or 2) rows."""
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < n_out
        acc0 = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
        rows = n.to(tl.int64)[:, None] * stride_qn
        for k0 in range(0, k_in, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < k_in
            w = tl.load(q_ptr + rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                        other=0).to(tl.float32)
            x0 = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            acc0 += tl.sum(w * x0[None, :], axis=1)
            if M == 2:
                x1 = tl.load(x_ptr + stride_xm + k, mask=k_ok, other=0.0).to(tl.float32)
                acc1 += tl.sum(w * x1[None, :], axis=1)
        scale = tl.load(scale_ptr + n, mask=n_ok, other=0.0)
        bias = tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
        out_ty = out_ptr.dtype.element_ty
        tl.store(out_ptr + n, (acc0 * scale + bias).to(out_ty), mask=n_ok)
        if M == 2:
            tl.store(out_ptr + n_out + n, (acc1 * scale + bias).to(out_ty), mask=n_ok)


    _int8_gemv_autotuned = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w) for n, k, w in TILES],
        key=["n_out", "k_in", "M"],
        do_bench=autotune_gpu_time,
    )(_int8_gemv_kernel)


def int8_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None, tile: dict | None = None) -> torch.Tensor:
    """The Triton kernel (a CUDA device, or the interpreter with a fixed ``tile``, e.g.
    ``{"BLOCK_N": 32, "BLOCK_K": 512, "num_warps": 4}``; otherwise tuned)."""
    _check(x, qweight, scale, bias)
    rows, k_in = x.shape
    n_out = qweight.shape[0]
    x, qweight = x.contiguous(), qweight.contiguous()
    out = torch.empty(rows, n_out, device=x.device, dtype=x.dtype)
    scale = scale.float().contiguous()

    def grid(cfg):
        return (triton.cdiv(n_out, cfg["BLOCK_N"]),)

    args = (x, qweight, scale, scale if bias is None else bias.contiguous(), out,
            n_out, k_in, x.stride(0), qweight.stride(0))
    launch_triton(_int8_gemv_autotuned, grid, args, {"M": rows, "HAS_BIAS": bias is not None},
                  tile)
    return out


def _int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """The Triton kernel on CUDA, the reference elsewhere."""
    if x.is_cuda and TRITON_AVAILABLE:
        return int8_gemv_triton(x, qweight, scale, bias)
    return int8_gemv_reference(x, qweight, scale, bias)


def _int8_gemv_fake(x, qweight, scale, bias):
    return x.new_empty((x.shape[0], qweight.shape[0]))


#: ``torch.ops.trdq.int8_gemv``: one opaque operator to torch.compile
int8_gemv = define_op("trdq::int8_gemv", _int8_gemv, _int8_gemv_fake)
