"""WeightOnlyLinear: int8 or packed int4 weights, dequantized inside ``forward``.

For layers whose speed does not matter but whose bytes do: the T5 text encoder (runs
once per request) and the denoiser's conditioning layers (timestep embedder, adaLN
projection, caption projection: one or a few rows per step). The integer weights have
one fp32 scale per output channel and group of input channels; ``forward`` dequantizes
to the activation dtype, so only that one layer's full-precision copy is ever alive.
"""

from __future__ import annotations

import torch
from torch import nn

from trdq import primitives as P
from trdq.kernels.triton_gemv import MAX_ROWS, int8_gemv

__all__ = ["WEIGHT_ONLY_INT4_GROUP", "WeightOnlyLinear"]

#: input channels per scale for 4-bit weights (8 bits use one scale per output channel)
WEIGHT_ONLY_INT4_GROUP = 64
#: input rows up to which a forward reads the integer weight once instead of dequantizing
#: it first: on CUDA, 8-bit weights with one scale per output channel through
#: ``trdq.kernels.triton_gemv``; otherwise, compiled, ``_reduced_forward``. The denoiser's
#: per-block adaLN projections see one row per sample (two under a CFG batch)
REDUCED_ROWS = MAX_ROWS


class WeightOnlyLinear(nn.Module):
    """``nn.Linear`` with int8 or packed int4 weights and group-wise fp32 scales."""

    # buffers registered in __init__ (declared for the type checker; no class attributes)
    qweight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, bits: int, group_size: int | None = None) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"weight-only bits must be 4 or 8, got {bits}")
        weight = linear.weight.detach().float()
        n, k = weight.shape
        group = k if group_size is None or group_size >= k else group_size
        if k % group or (bits == 4 and group % 2):
            raise ValueError(f"group size {group} must divide K={k} (and be even for int4)")
        self.in_features, self.out_features = k, n
        self.bits, self.group = bits, group
        grouped = weight.reshape(n, k // group, group)
        qmax = P.qmax_for(bits)
        scale = (grouped.abs().amax(dim=-1) / qmax).clamp_min(P.MIN_SCALE)
        q = torch.clamp(torch.round(grouped / scale[..., None]), -qmax, qmax).to(torch.int8)
        q = q.reshape(n, k)
        self.register_buffer("qweight", P.pack_int4(q) if bits == 4 else q)
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The stored bytes as int8. transformers' T5 reads ``wo.weight.dtype`` to decide
        whether to cast its activations to the weight's dtype and skips the cast for int8
        (the bitsandbytes convention), which is what a weight-only layer wants."""
        return self.qweight.view(torch.int8)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        q = P.unpack_int4(self.qweight) if self.bits == 4 else self.qweight
        n, k, g = self.out_features, self.in_features, self.group
        scale = self.scale.to(dtype)[..., None]
        return (q.reshape(n, k // g, g).to(dtype) * scale).reshape(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        few_rows = x.numel() <= REDUCED_ROWS * self.in_features
        if few_rows and x.is_cuda and self.bits == 8 and self.group == self.in_features:
            out = int8_gemv(x.reshape(-1, self.in_features), self.qweight, self.scale[:, 0],
                            bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if few_rows and torch.compiler.is_compiling():
            return self._reduced_forward(x, bias)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)

    def _reduced_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The same product as a reduction over the integer weight, for a few rows under
        torch.compile, which fuses the unpacking, the scales and the sums into one kernel
        that reads each weight byte once.

        Why: dequantizing first writes the whole weight in the activation dtype and the
        GEMM reads it back. FLUX.1-dev's per-block adaLN projections (one row a step,
        3072 x 18432 and 3072 x 9216, 8-bit) spent 5.9 ms of a 90.4 ms H100 step so: 3.2 ms
        in the dequantizing kernels and 2.7 ms in bf16 GEMVs over the written weights
        (docs/bench/flux-dev-1024-static-h100.json). Eager, this form would materialise
        ``[M, N, K]``: only a compiled graph takes it. Accumulates in float32.
        """
        q = P.unpack_int4(self.qweight) if self.bits == 4 else self.qweight
        n, k, g = self.out_features, self.in_features, self.group
        rows = x.reshape(-1, 1, k // g, g).float()
        per_group = (q.reshape(1, n, k // g, g).float() * rows).sum(dim=-1)  # [M, N, K/g]
        out = (per_group * self.scale[None]).sum(dim=-1)
        if bias is not None:
            out = out + bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], n)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int{self.bits} weights, {self.group} channels per scale")
