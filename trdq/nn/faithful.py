"""FaithfulLinear: the released TR-DQ algorithm as a fake-quant layer (reference only).

Per time range r (TRDQ-RELEASED.md 14.2): SmoothQuant scaling with the range's EMA
activation absmax and exponent alpha, DuQuant-style ``R0 * P * R1`` rotation, asymmetric
per-output-channel min-max weights, dynamic asymmetric per-token activations. It is the
quality yardstick for our real design, not a served mode: it keeps the float weight and
rebuilds the fake-quantized weight when the range changes (<= n_r rebuilds per
generation) instead of storing n_r weight copies.

Documented deviations: rotations are Hadamard-with-random-signs (see rotation.py);
per-token scales are per sample and token (the paper's intent, quirk 14.8.5 off);
weight parameters are per range (intent, quirk 14.8.1 off).
"""

from __future__ import annotations

import torch
from torch import nn

from trdq.rotation import DuQuantRotation
from trdq.timestep import QuantContext

__all__ = ["FaithfulLinear", "fake_quant_asym_rows"]


def fake_quant_asym_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric min-max fake quantization per row of ``[M, K]`` (zero kept exact)."""
    levels = (1 << bits) - 1
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / levels).clamp_min(1e-6)
    zp = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zp, 0, levels)
    return (q - zp) * scale


class FaithfulLinear(nn.Module):
    # buffers registered in __init__ (declared for the type checker; no class attributes)
    smooth_by_range: torch.Tensor
    r0: torch.Tensor | None
    perm: torch.Tensor | None
    r1: torch.Tensor | None

    def __init__(
        self,
        linear: nn.Linear,
        smooth_by_range: torch.Tensor,
        rotations: list[DuQuantRotation] | None,
        context: QuantContext,
        weight_bits: int,
        act_bits: int = 8,
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = (
            nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
            if linear.bias is not None
            else None
        )
        self.context = context
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        # calibration results live on the host; the layer runs where the weight is
        device = linear.weight.device
        self.register_buffer("smooth_by_range", smooth_by_range.float().to(device))
        if rotations is not None:
            self.register_buffer("r0", torch.stack([r.r0 for r in rotations]).to(device))
            self.register_buffer("perm", torch.stack([r.perm for r in rotations]).to(device))
            self.register_buffer("r1", torch.stack([r.r1 for r in rotations]).to(device))
        else:
            self.r0 = self.perm = self.r1 = None
        self._cached_range: int | None = None
        self._cached_weight: torch.Tensor | None = None

    def _transform(self, z: torch.Tensor, r: int) -> torch.Tensor:
        # the three rotation buffers are set together, or all None
        if self.r0 is None or self.perm is None or self.r1 is None:
            return z.float()
        rot = DuQuantRotation(self.r0[r], self.perm[r], self.r1[r])
        return rot.apply(z)

    def _weight_for(self, r: int) -> torch.Tensor:
        if self._cached_range != r or self._cached_weight is None:
            w = self.weight.float() * self.smooth_by_range[r][None, :]
            w = self._transform(w, r)
            self._cached_weight = fake_quant_asym_rows(w, self.weight_bits)
            self._cached_range = r
        return self._cached_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        r = min(self.context.group, self.smooth_by_range.shape[0] - 1)
        x2 = x.reshape(-1, self.in_features).float() / self.smooth_by_range[r]
        xq = fake_quant_asym_rows(self._transform(x2, r), self.act_bits)
        out = xq @ self._weight_for(r).t()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"faithful w{self.weight_bits}a{self.act_bits}, ranges={self.smooth_by_range.shape[0]}"
        )
