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

from torch import nn

from trdq.nn.weight_only import WEIGHT_ONLY_INT4_GROUP, WeightOnlyLinear
from trdq.pipeline import weight_bytes

__all__ = ["TEXT_ENCODER_QUANTS", "TextEncoderReport", "WeightOnlyLinear", "quantize_text_encoder"]

#: the settings ``TRDQ_TEXT_ENCODER_QUANT`` takes -> (bits, input channels per scale)
TEXT_ENCODER_QUANTS: dict[str, tuple[int, int | None] | None] = {
    "none": None,
    "int8": (8, None),  # one scale per output channel
    "int4": (4, WEIGHT_ONLY_INT4_GROUP),  # 4 bits need finer scales: one per 64 input channels
}


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
