"""Quantized layers: QuantLinear (real backends) and FaithfulLinear (released algorithm)."""

from trdq.nn.faithful import FaithfulLinear
from trdq.nn.quant_linear import LayerQuantParams, QuantLinear

__all__ = ["FaithfulLinear", "LayerQuantParams", "QuantLinear"]
