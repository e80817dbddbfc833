"""Quantized layers: QuantLinear (real backends), FaithfulLinear (released algorithm) and
WeightOnlyLinear (conditioning layers, text encoder)."""

from trdq.nn.faithful import FaithfulLinear
from trdq.nn.quant_linear import QuantLinear
from trdq.nn.weight_only import WeightOnlyLinear

__all__ = ["FaithfulLinear", "QuantLinear", "WeightOnlyLinear"]
