"""CUDA W4A8 backend: packed 4-bit weights (two per byte) x int8 activations, Triton GEMM.

Weights stay packed in device memory (``[N, K/2]`` uint8, a quarter of bf16) and are
unpacked in registers inside the GEMM (``triton_w4a8``). Activations go through the same
fused rotate+quantize kernel as ``cuda_fp8`` but to int8, so the integers, the int32
accumulation and the scales are exactly those of the reference backend; only the fp32
epilogue rounding differs. 8-bit integer weights (``w8a8``) run through the same kernel
unpacked: an exact int8 x int8 tensor-core GEMM.

Needs Triton and a CUDA GPU with int8 tensor cores (compute capability >= 8.0).

Auto-selection: priority 30, above ``cuda_fp8`` (25), so integer-grid presets (``w8a8``,
``w4a8``) get exact integer arithmetic; ``fp8`` presets are not supported here and go to
``cuda_fp8``. At PixArt shapes on an H100 the Triton int8 GEMM is as fast as FP8
``_scaled_mm`` and faster than bf16 and ``torch._int_mm`` (docs/KERNELS.md).
"""

from __future__ import annotations

import torch

from trdq.kernels import ops
from trdq.kernels.base import ActQuant, KernelBackend
from trdq.kernels.registry import register
from trdq.kernels.triton_w4a8 import pack_int4_tiled, unpack_int4_tiled

__all__ = ["CudaW4A8Backend"]


class CudaW4A8Backend(KernelBackend):
    name = "cuda_w4a8"
    device_types = ("cuda",)
    priority = 30
    fuses_centering = True
    fuses_cfg_delta = True
    restores_cfg_delta = True  # lowbit_linear returns the cond rows as served
    fused_activations = ("gelu_tanh",)  # in the GEMM's epilogue

    def is_available(self, device: torch.device | str) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != "cuda":
            return False, f"needs a CUDA device, got {device}"
        if not torch.cuda.is_available():
            return False, "torch.cuda.is_available() is False"
        if not ops.TRITON_AVAILABLE:
            return False, "triton is not installed (the W4A8 GEMM is a Triton kernel)"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return (
                False,
                f"int8 tensor-core GEMM needs compute capability >= 8.0, got {major}.{minor}",
            )
        return True, ""

    def supports(self, config) -> tuple[bool, str]:
        if getattr(config, "fp8", False):
            return False, "fp8 (e4m3) configs run on cuda_fp8"
        if config.act_bits != 8 or config.weight_bits not in (4, 8):
            return False, "cuda_w4a8 serves 4- or 8-bit integer weights with 8-bit activations"
        if config.rotation == "duquant":
            return False, "duquant rotation (faithful preset) runs on reference only"
        return True, ""

    def pack(
        self, qweight: torch.Tensor, weight_scale: torch.Tensor, bits: int
    ) -> dict[str, torch.Tensor]:
        if qweight.dtype != torch.int8:
            raise TypeError(f"cuda_w4a8 packs int8-held integers, got {qweight.dtype}")
        if qweight.shape[1] % 128:
            raise ValueError(f"K={qweight.shape[1]} must be a multiple of 128")
        # 4-bit: the GEMM's tile-split nibble layout (see triton_w4a8); unpack() returns
        # the canonical integers
        weight = pack_int4_tiled(qweight) if bits == 4 else qweight
        return {"weight": weight.contiguous(), "weight_scale": weight_scale.float().contiguous()}

    def unpack(self, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        weight = packed["weight"]
        if weight.dtype == torch.uint8:
            weight = unpack_int4_tiled(weight)
        return weight, packed["weight_scale"]

    def linear(
        self,
        x: torch.Tensor,
        packed: dict[str, torch.Tensor],
        act: ActQuant,
        bias: torch.Tensor | None,
        activation: str = "",
    ) -> torch.Tensor:
        if act.bits != 8 or act.fp8:
            raise ValueError("cuda_w4a8 quantizes activations to int8")
        return ops.lowbit_linear(x, packed["weight"], packed["weight_scale"], bias,
                                 **act.op_kwargs(x), fp8=False, activation=activation)


register(CudaW4A8Backend())
