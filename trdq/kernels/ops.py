"""torch operators for the CUDA backends, with fake (meta) implementations.

Defined through ``trdq.kernels.oplib.define_op`` (``torch.ops.trdq.*``): ``torch.compile``
sees each op as one opaque node (no graph break) and traces shapes through the fake
functions. Each op runs its Triton / cuBLASLt path on CUDA when Triton is installed, and
the pure-torch reference of the same math elsewhere, so the ops themselves are testable
on a CPU machine.

The Python entry points (``rotate_quant``, ``fp8_linear``, ``lowbit_linear``) take the
tensors they multiply positionally and the activation quantization by keyword, with the
same names and order everywhere (``ActQuant.op_kwargs`` builds them; ``cpu_native``,
``cpu_int8`` and ``triton_rotate_quant`` spell them alike): ``rotation_block, smooth,
row_scale, clip_ratio``, the activation format, ``weight_sum``, ``delta_half``. Each calls
its operator with every argument positional, in that order: the dispatcher parses keyword
arguments on every call, ~5 us more a call (``scripts/host_dispatch_bench.py``, CPU), and a
step calls these ops about 200 times.

Ops (notation M rows, K input channels, N output channels):
- ``trdq::rotate_quant(x [M,K], *, rotation_block, smooth?[K], row_scale?[M], clip_ratio [M],
  fp8, delta_half) -> (q [M,K] e4m3|int8, scale [M] fp32)``: the fused activation kernel.
- ``trdq::fp8_linear(x [M,K], weight [N,K] e4m3, weight_scale [N], bias?[N], *,
  rotation_block, smooth?, row_scale?, clip_ratio, weight_sum?[N], delta_half) -> [M,N]
  x.dtype``: rotate+quantize to e4m3, then ``torch._scaled_mm`` with row-wise scales and
  the bias in its epilogue.
- ``trdq::lowbit_linear(x, weight [N,K/2] uint8 packed int4 | [N,K] int8, weight_scale,
  bias?, *, rotation_block, smooth?, row_scale?, clip_ratio, fp8, weight_sum?[N],
  delta_half, activation) -> [M,N]``: rotate+quantize to int8 (or e4m3), then the Triton
  GEMM that unpacks 4-bit weights in registers; ``activation`` ("" or "gelu_tanh") is
  applied to the served output, in the GEMM's epilogue where the output is final there.

``weight_sum`` given (dynamic mode): the activation kernel centres each row and the GEMM
adds ``row mean x weight_sum`` back (in the Triton GEMM's epilogue; one rank-1 update
after ``_scaled_mm``), the fused form of ``serve_linear``'s centring.

``delta_half > 0`` (dynamic mode, M = 2 x delta_half): the activation kernel quantizes
each row of the second (cond) half as its difference from the paired first-half row, the
fused form of ``serve_linear``'s CFG-delta subtraction. ``fp8_linear`` returns that half as
``W d + b`` and ``serve_linear`` (``kernels.base``) adds the uncond output back; ``lowbit_linear`` returns it
as served, ``y_u + W d``: on the GPU its activation kernel writes each pair as adjacent
rows and the GEMM epilogue adds them (no pass over the output), elsewhere the addition
follows the GEMM. 0 means off.

``rotation_block <= 0`` means no rotation; ``row_scale`` None means dynamic per-token,
with ``clip_ratio`` a float32 ``[M]`` tensor (one ratio per row: each CFG half its own,
read on the device, so neither a launch per half nor a recompile per value).
"""

from __future__ import annotations

import torch

from trdq.kernels import triton_rotate_quant as rq
from trdq.kernels import triton_w4a8 as w4
from trdq.kernels.base import apply_output_activation, restore_cfg_delta
from trdq.kernels.oplib import define_op, linear_fake

__all__ = [
    "fast_path_available", "fp8_linear", "fp8_linear_unrotated", "lowbit_linear", "rotate_quant",
    "scaled_mm_rowwise",
]

TRITON_AVAILABLE = rq.TRITON_AVAILABLE


def fast_path_available(x: torch.Tensor) -> bool:
    return x.is_cuda and TRITON_AVAILABLE


def _rotate_quant_impl(
    x, *, rotation_block, smooth, row_scale, clip_ratio, fp8, center_out=None, delta_half=0,
    interleave_pairs=False,
):
    kwargs = {
        "rotation_block": rotation_block if rotation_block > 0 else None,
        "smooth": smooth,
        "row_scale": row_scale,
        "clip_ratio": clip_ratio,
        "out_dtype": torch.float8_e4m3fn if fp8 else torch.int8,
        "center_out": center_out,
        "delta_half": delta_half,
        "interleave_pairs": interleave_pairs,
    }
    if fast_path_available(x):
        return rq.rotate_quant_triton(x.contiguous(), **kwargs)
    return rq.rotate_quant_reference(x, **kwargs)


def _center_buffer(x: torch.Tensor, weight_sum: torch.Tensor | None) -> torch.Tensor | None:
    """Where the activation kernel writes each row's mean, when centring is on."""
    if weight_sum is None:
        return None
    return torch.empty((x.shape[0],), device=x.device, dtype=torch.float32)


def _rotate_quant(
    x: torch.Tensor,
    rotation_block: int,
    smooth: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    clip_ratio: torch.Tensor,
    fp8: bool,
    delta_half: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    q, scale = _rotate_quant_impl(
        x, rotation_block=rotation_block, smooth=smooth, row_scale=row_scale,
        clip_ratio=clip_ratio, fp8=fp8, delta_half=delta_half,
    )
    # an op must not return an alias of an input (static scales are passed through)
    return q, scale.clone() if row_scale is not None else scale


def _rotate_quant_fake(x, rotation_block, smooth, row_scale, clip_ratio, fp8, delta_half):
    dtype = torch.float8_e4m3fn if fp8 else torch.int8
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((x.shape[0],), dtype=torch.float32)


_rotate_quant_op = define_op("trdq::rotate_quant", _rotate_quant, _rotate_quant_fake)


def rotate_quant(
    x: torch.Tensor,
    *,
    rotation_block: int,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
    fp8: bool = False,
    delta_half: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``trdq::rotate_quant``: ``(q [M, K] e4m3 or int8, scale [M] fp32)``."""
    return _rotate_quant_op(x, rotation_block, smooth, row_scale, clip_ratio, fp8, delta_half)


def scaled_mm_rowwise(
    q: torch.Tensor,
    a_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    center: torch.Tensor | None = None,
    weight_sum: torch.Tensor | None = None,
) -> torch.Tensor:
    """e4m3 ``[M,K] x [N,K]^T`` with per-row and per-column fp32 scales (+ bias)
    (+ ``center[m] * weight_sum[n]``)."""
    if q.is_cuda:
        # cuBLASLt/CUTLASS row-wise FP8 wants bf16 output (and a bf16 bias in the epilogue).
        # Fast accumulation keeps the partial sums in the tensor cores' accumulator instead
        # of promoting them to fp32 every few K-steps: the inference default of torchao's
        # float8 too; its error is bounded by the GPU tests against the reference.
        out = torch._scaled_mm(
            q,
            weight.t(),
            scale_a=a_scale.view(-1, 1),
            scale_b=weight_scale.view(1, -1),
            bias=bias.to(torch.bfloat16) if bias is not None else None,
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )
        if center is not None:
            assert weight_sum is not None, "center [M] and weight_sum [N] come together"
            out.addr_(center.to(out.dtype), weight_sum.to(out.dtype))
        return out if out_dtype == torch.bfloat16 else out.to(out_dtype)
    # reference: dequantize and multiply in float32
    out = (q.float() * a_scale[:, None]) @ (weight.float() * weight_scale[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    if center is not None:
        assert weight_sum is not None, "center [M] and weight_sum [N] come together"
        out = out + center[:, None] * weight_sum.float()[None, :]
    return out.to(out_dtype)


def _fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    rotation_block: int,
    smooth: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    clip_ratio: torch.Tensor,
    weight_sum: torch.Tensor | None,
    delta_half: int,
) -> torch.Tensor:
    center = _center_buffer(x, weight_sum)
    q, a_scale = _rotate_quant_impl(
        x, rotation_block=rotation_block, smooth=smooth, row_scale=row_scale,
        clip_ratio=clip_ratio, fp8=True, center_out=center, delta_half=delta_half,
    )
    return scaled_mm_rowwise(q, a_scale, weight, weight_scale, bias, x.dtype, center, weight_sum)


_fp8_linear_op = define_op("trdq::fp8_linear", _fp8_linear, linear_fake)


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    rotation_block: int,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
    weight_sum: torch.Tensor | None = None,
    delta_half: int = 0,
) -> torch.Tensor:
    """``trdq::fp8_linear``: ``[M, N]`` in x's dtype."""
    return _fp8_linear_op(x, weight, weight_scale, bias, rotation_block, smooth, row_scale,
                          clip_ratio, weight_sum, delta_half)


def fp8_linear_unrotated(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
) -> torch.Tensor:
    """``fp8_linear`` without rotation, centring or CFG-delta, in plain torch ops rather
    than one custom op: with no rotation the quantization is a per-channel divide, a
    per-row scale and a cast to e4m3, which torch.compile fuses into the kernel that made
    ``x`` (LayerNorm + modulate, GELU), as it does for torchao's float8. ``x`` is then
    written once at e4m3 width and read once by the GEMM, with no quantizer pass between.
    The arithmetic is the reference's (``rotate_quant_reference``); only the GEMM is an
    op (``torch._scaled_mm``, an extern kernel in the compiled graph)."""
    q, a_scale = rq.rotate_quant_reference(
        x, rotation_block=None, smooth=smooth, row_scale=row_scale, clip_ratio=clip_ratio,
        out_dtype=torch.float8_e4m3fn,
    )
    return scaled_mm_rowwise(q, a_scale, weight, weight_scale, bias, x.dtype)


def lowbit_gemm(
    q, a_scale, weight, weight_scale, bias, out_dtype, center=None, weight_sum=None,
    paired=False, activation="",
):
    args = (q, a_scale, weight, weight_scale, bias, out_dtype)
    kw = {"center": center, "weight_sum": weight_sum, "paired": paired, "activation": activation}
    if q.is_cuda and TRITON_AVAILABLE:
        return w4.w4a8_matmul_triton(*args, **kw)
    return w4.w4a8_matmul_reference(*args, **kw)


def _lowbit_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    rotation_block: int,
    smooth: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    clip_ratio: torch.Tensor,
    fp8: bool,
    weight_sum: torch.Tensor | None,
    delta_half: int,
    activation: str,
) -> torch.Tensor:
    center = _center_buffer(x, weight_sum)
    # on the GPU the CFG pairs travel as adjacent rows and the GEMM epilogue restores the
    # cond half; elsewhere (the reference path, or rows the single-pass kernel cannot
    # hold) the restore follows the GEMM
    block = rotation_block if rotation_block > 0 else rq.hadamard_block_size(x.shape[1])
    paired = bool(delta_half) and fast_path_available(x) and rq.single_pass_applies(
        x.shape[1], block, row_scale is not None
    )
    q, a_scale = _rotate_quant_impl(
        x, rotation_block=rotation_block, smooth=smooth, row_scale=row_scale,
        clip_ratio=clip_ratio, fp8=fp8, center_out=center, delta_half=delta_half,
        interleave_pairs=paired,
    )
    # the activation needs the served output: in the epilogue unless a restore follows
    restore_after = bool(delta_half) and not paired
    out = lowbit_gemm(
        q, a_scale, weight, weight_scale, bias, x.dtype, center, weight_sum, paired,
        "" if restore_after else activation,
    )
    if not restore_after:
        return out
    out = restore_cfg_delta(out, delta_half, bias)
    return apply_output_activation(out, activation)


_lowbit_linear_op = define_op("trdq::lowbit_linear", _lowbit_linear, linear_fake)


def lowbit_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    rotation_block: int,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
    fp8: bool = False,
    weight_sum: torch.Tensor | None = None,
    delta_half: int = 0,
    activation: str = "",
) -> torch.Tensor:
    """``trdq::lowbit_linear``: ``[M, N]`` in x's dtype."""
    return _lowbit_linear_op(x, weight, weight_scale, bias, rotation_block, smooth, row_scale,
                             clip_ratio, fp8, weight_sum, delta_half, activation)
