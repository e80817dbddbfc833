"""Weight-only quantization of the text encoder (T5): int8 or packed int4 weights.

The text encoder runs once per request, so its speed hardly matters, but its weights
dominate pipeline memory (T5-XXL is 9.1 GB of PixArt-alpha's 12.9 GB bf16 peak,
ENV-NOTES). Each ``nn.Linear`` becomes a ``WeightOnlyLinear``: integer weights with one
fp32 scale per output channel and group of input channels, dequantized to the
activation dtype inside ``forward``, one layer at a time, so only that layer's
full-precision copy is ever alive. Embeddings and norms stay as they are.

    from trdq.text_encoder import quantize_text_encoder
    report = quantize_text_encoder(pipe.text_encoder, bits=8)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trdq import primitives as P
from trdq.pipeline import weight_bytes

__all__ = ["TEXT_ENCODER_QUANTS", "TextEncoderReport", "WeightOnlyLinear", "quantize_text_encoder"]

#: the settings ``TRDQ_TEXT_ENCODER_QUANT`` takes -> (bits, input channels per scale)
TEXT_ENCODER_QUANTS: dict[str, tuple[int, int | None] | None] = {
    "none": None,
    "int8": (8, None),  # one scale per output channel
    "int4": (4, 64),  # 4 bits need finer scales: one per 64 input channels
}


class WeightOnlyLinear(nn.Module):
    """``nn.Linear`` with int8 or packed int4 weights and group-wise fp32 scales."""

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
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int{self.bits} weights, {self.group} channels per scale")


@dataclass
class TextEncoderReport:
    quant: str
    replaced: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


def quantize_text_encoder(encoder: nn.Module, quant: str = "int8") -> TextEncoderReport:
    """Replace every ``nn.Linear`` of ``encoder`` in place (``quant``: int8 | int4 | none)."""
    if quant not in TEXT_ENCODER_QUANTS:
        raise ValueError(f"text encoder quant must be one of {sorted(TEXT_ENCODER_QUANTS)}, "
                         f"got {quant!r}")
    report = TextEncoderReport(quant=quant, bytes_before=sum(weight_bytes(encoder).values()))
    spec = TEXT_ENCODER_QUANTS[quant]
    if spec is not None:
        bits, group = spec
        targets = [(name, module) for name, module in encoder.named_modules()
                   if isinstance(module, nn.Linear)]
        for name, linear in targets:
            parent_name, _, child = name.rpartition(".")
            parent = encoder.get_submodule(parent_name) if parent_name else encoder
            quantized = WeightOnlyLinear(linear, bits, group).to(linear.weight.device)
            setattr(parent, child, quantized)
            report.replaced.append(name)
    report.bytes_after = sum(weight_bytes(encoder).values())
    return report
