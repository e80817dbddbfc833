"""The reference backend: fake quantization in float32, the numerical oracle.

It performs exactly the arithmetic a real kernel is meant to perform (same rotation,
same rounding, same clamping, same scales), but dequantizes and multiplies in float32.
Every fast backend is tested against it. It works for every config and device, and is
the last resort of ``backend="auto"``: the registry registers it itself (this module
imports nothing of the registry's).
"""

from __future__ import annotations

import torch

from trdq import primitives as P
from trdq.kernels.base import ActQuant, KernelBackend
from trdq.quant_transforms import prepare_activation

__all__ = ["ReferenceBackend", "activation_scale", "fake_quant_activation"]


def activation_scale(x_rot: torch.Tensor, act: ActQuant) -> torch.Tensor:
    """Per-row scale ``[M]``: the static one given, or the dynamic per-token one."""
    if act.row_scale is not None:
        return act.row_scale.float().clamp_min(P.MIN_SCALE)
    return P.dynamic_row_scale(x_rot, act.bits, act.clip_ratio, fp8=act.fp8)


def fake_quant_activation(x_rot: torch.Tensor, act: ActQuant) -> torch.Tensor:
    scale = activation_scale(x_rot, act)[:, None]
    if act.fp8:
        return P.fake_quant_fp8(x_rot, scale)
    return P.fake_quant_symmetric(x_rot, scale, act.bits)


class ReferenceBackend(KernelBackend):
    name = "reference"
    device_types = ()  # everywhere
    priority = 0

    def is_available(self, device: torch.device | str) -> tuple[bool, str]:
        return True, ""

    def pack(
        self, qweight: torch.Tensor, weight_scale: torch.Tensor, bits: int
    ) -> dict[str, torch.Tensor]:
        # Store the same real low-bit layout the fast backends use, so memory reports and
        # artifacts do not depend on which backend is the oracle.
        if qweight.dtype == torch.float8_e4m3fn:
            weight = qweight
        elif bits == 4:
            weight = P.pack_int4(qweight)
        else:
            weight = qweight.to(torch.int8)
        return {"weight": weight, "weight_scale": weight_scale.float()}

    def unpack(self, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        weight = packed["weight"]
        if weight.dtype == torch.uint8:
            weight = P.unpack_int4(weight)
        return weight, packed["weight_scale"]

    def linear(
        self,
        x: torch.Tensor,
        packed: dict[str, torch.Tensor],
        act: ActQuant,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        qweight, weight_scale = self.unpack(packed)
        w = qweight.float() * weight_scale[:, None]
        xq = fake_quant_activation(prepare_activation(x, act), act)
        out = xq @ w.t()
        if bias is not None:
            out = out + bias.float()
        return out.to(x.dtype)

