"""CUDA FP8 backend (Hopper / Ada): e4m3 weights x e4m3 activations via ``torch._scaled_mm``.

Per call: one fused Triton kernel (``triton_rotate_quant``) reads the bf16 activations,
divides by the smoothing vector, applies the block Hadamard (in-register fast
Walsh-Hadamard) and writes e4m3 with per-row scales; then ``torch._scaled_mm`` multiplies
with row-wise scales (activation row x weight channel) and adds the bias in its epilogue,
writing bf16. Both steps live in the custom op ``trdq::fp8_linear`` (``ops.py``).

Without rotation, centring or CFG-delta (the ``fp8-norot`` preset) the activation
quantization is plain torch ops (``ops.fp8_linear_unrotated``) that torch.compile fuses into
the kernel producing the activations, so no quantizer pass runs at all.

Formats:
- ``fp8`` configs: weights arrive as e4m3 with fp32 row scales and are used as is; the
  result matches the reference backend up to GEMM accumulation order.
- ``w8a8`` configs (int8 grid): the integer weights are dequantized and re-quantized to
  e4m3 per output channel at pack time, and the int8 activation scales are mapped to the
  same clipping range in e4m3 (``s_e4m3 = s_int8 * 127 / 448``). This is a second
  rounding (e4m3 keeps 3 mantissa bits): its SQNR against the int8 reference is measured
  in the tests, not assumed. ``cuda_w4a8`` serves the int8 grid exactly, on Triton, and
  has the higher auto priority, so this conversion happens only when asked for by name.
"""

from __future__ import annotations

import torch

from trdq import primitives as P
from trdq.kernels import ops
from trdq.kernels.base import ActQuant, KernelBackend
from trdq.kernels.registry import register

__all__ = ["INT8_TO_E4M3_SCALE", "CudaFp8Backend"]

#: maps an int8 activation scale (clip range 127 * s) to the e4m3 scale of the same range
INT8_TO_E4M3_SCALE = 127.0 / P.FP8_E4M3_MAX


def fp8_unavailable_reason(device: torch.device | str) -> str:
    """Empty when the FP8 path can run on ``device``, else what is missing."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"needs a CUDA device, got {device}"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    if not ops.TRITON_AVAILABLE:
        return "triton is not installed (the fused rotate+quantize kernel needs it)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"FP8 tensor cores need compute capability >= 8.9, got {major}.{minor}"
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm"
    return ""


class CudaFp8Backend(KernelBackend):
    name = "cuda_fp8"
    device_types = ("cuda",)
    priority = 25
    fuses_centering = True
    fuses_cfg_delta = True

    def is_available(self, device: torch.device | str) -> tuple[bool, str]:
        reason = fp8_unavailable_reason(device)
        return not reason, reason

    def supports(self, config) -> tuple[bool, str]:
        if config.weight_bits != 8 or config.act_bits != 8:
            return False, "cuda_fp8 serves 8-bit weights and activations (W4A8: cuda_w4a8)"
        if config.rotation == "duquant":
            return False, "duquant rotation (faithful preset) runs on reference only"
        return True, ""

    def pack(
        self, qweight: torch.Tensor, weight_scale: torch.Tensor, bits: int
    ) -> dict[str, torch.Tensor]:
        if qweight.dtype == torch.float8_e4m3fn:
            weight, scale = qweight.contiguous(), weight_scale.float().contiguous()
        elif qweight.dtype == torch.int8 and bits == 8:
            w = qweight.float() * weight_scale.float()[:, None]
            weight, scale = P.quantize_weight_per_channel(w, 8, fp8=True)
        else:
            raise TypeError(f"cuda_fp8 packs e4m3 or 8-bit int weights, got {qweight.dtype}/{bits}")
        return {"weight": weight.contiguous(), "weight_scale": scale.contiguous()}

    def unpack(self, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return packed["weight"], packed["weight_scale"]

    def linear(
        self,
        x: torch.Tensor,
        packed: dict[str, torch.Tensor],
        act: ActQuant,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        if act.bits != 8:
            raise ValueError(f"cuda_fp8 quantizes activations to 8 bits, got {act.bits}")
        kwargs = act.op_kwargs(x)
        if act.row_scale is not None and not act.fp8:
            kwargs["row_scale"] = act.row_scale.float() * INT8_TO_E4M3_SCALE
        weight, weight_scale = packed["weight"], packed["weight_scale"]
        if not (kwargs["rotation_block"] or kwargs["delta_half"]) and kwargs["weight_sum"] is None:
            # nothing only a kernel can do: torch ops the compiler fuses with x's producer
            return ops.fp8_linear_unrotated(
                x, weight, weight_scale, bias, smooth=kwargs["smooth"],
                row_scale=kwargs["row_scale"], clip_ratio=kwargs["clip_ratio"],
            )
        return ops.fp8_linear(x, weight, weight_scale, bias, **kwargs)


register(CudaFp8Backend())
