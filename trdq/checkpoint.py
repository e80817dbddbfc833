"""Quantized models on disk: each layer's canonical quantized tensors beside its calibration.

``trdq.save`` writes and ``trdq.load`` reads the same artifact as the calibration cache
(``trdq.cache``: ``tensors.safetensors`` + ``manifest.json`` with the config, the
fingerprints and every file's sha256, written atomically, validated on load). A saved
model's tensors are the calibration's (same keys) plus, per quantized layer, its weights
as quantized, in no backend's layout:

- ``<layer>/qweight``: ``[N, K]`` int8 holding ``weight_bits``-bit integers, or
  float8_e4m3fn for the fp8 presets; stored two per byte (uint8 ``[N, K/2]``,
  ``primitives.pack_int4``) when every value fits 4 bits;
- ``<layer>/weight_scale``: ``[N]`` float32, so that the smoothed, rotated weight
  ``W s R ~= qweight * weight_scale[:, None]``;
- ``<layer>/weight_sum``: ``[N]`` float32 row sums for centred activations (``act_center``),
  saved rather than recomputed so a model saved on one device loads bit for bit on another;
- ``<layer>/rotation_block``, ``smooth_divisor``, ``act_scale_by_group``,
  ``clip_ratio_by_group`` (and ``weight_clip`` / ``weight_q`` where calibrated): as the
  cache stores them.

The manifest's ``contents`` says ``"weights"`` for such a file and ``"calibration"`` for a
cache artifact (or a faithful-preset model, whose reference-only layers are rebuilt from
the float weights). Loading packs the canonical weights for whichever backend is chosen
(``KernelBackend.pack``), so a model saved from one backend loads on any other that
supports its config. Everything that is not quantized (embedders, norms, biases, the
weight-only conditioning layers, which are a deterministic function of the float weights)
comes from the model it is loaded into, which must be the one it was saved from: the
manifest's model fingerprint is checked.
"""

from __future__ import annotations

import torch
from torch import nn

from trdq import primitives as P
from trdq.config import QuantConfig
from trdq.nn.quant_linear import QuantLinear

__all__ = ["CONTENTS_CALIBRATION", "CONTENTS_WEIGHTS", "layer_weight_tensors", "read_layer_weights"]

#: the manifest's ``contents``: the calibration alone (the cache's artifacts) ...
CONTENTS_CALIBRATION = "calibration"
#: ... or the calibration and every quantized layer's weights (``trdq.save``)
CONTENTS_WEIGHTS = "weights"


def _weight_dtype(config: QuantConfig) -> torch.dtype:
    return torch.float8_e4m3fn if config.fp8 else torch.int8


def layer_weight_tensors(name: str, layer: QuantLinear,
                         config: QuantConfig) -> dict[str, torch.Tensor]:
    """The canonical weights of ``layer`` under ``<name>/...`` keys, on the CPU."""
    qweight, weight_scale = layer.canonical_weights()
    if qweight.dtype != _weight_dtype(config):
        # cuda_fp8 re-quantizes integer weights to e4m3 when it packs them (a lossy step):
        # the integers the config describes are gone
        raise ValueError(
            f"{name}: backend {layer.backend.name} holds {qweight.dtype} weights, not the "
            f"{_weight_dtype(config)} of config {config.name!r}; save from a model quantized "
            "on a backend that keeps them (reference, cpu_int8, cuda_w4a8)")
    out = {
        f"{name}/qweight": (P.store_int_weights(qweight) if qweight.dtype == torch.int8
                            else qweight.cpu().contiguous()),
        f"{name}/weight_scale": weight_scale.float().cpu().contiguous(),
    }
    if layer.weight_sum is not None:
        out[f"{name}/weight_sum"] = layer.weight_sum.float().cpu().contiguous()
    return out


def read_layer_weights(
    tensors: dict[str, torch.Tensor], name: str, linear: nn.Linear, config: QuantConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(qweight [N, K], weight_scale [N], weight_sum [N] or None)`` of layer ``name``,
    checked against the float ``linear`` it replaces and against ``config``; raises
    KeyError for a missing tensor, ValueError for one that does not fit."""
    stored = tensors[f"{name}/qweight"]
    qweight = P.load_int_weights(stored) if stored.dtype in (torch.uint8, torch.int8) else stored
    weight_scale = tensors[f"{name}/weight_scale"]
    weight_sum = tensors.get(f"{name}/weight_sum")
    n, k = linear.out_features, linear.in_features
    if qweight.dtype != _weight_dtype(config):
        raise ValueError(f"{name}: weights are {stored.dtype}, config {config.name!r} "
                         f"needs {_weight_dtype(config)}")
    if tuple(qweight.shape) != (n, k):
        raise ValueError(f"{name}: weights shaped {tuple(qweight.shape)}, the model's layer "
                         f"is [{n}, {k}]")
    if weight_scale.dtype != torch.float32 or tuple(weight_scale.shape) != (n,):
        raise ValueError(f"{name}: weight scales {weight_scale.dtype} "
                         f"{tuple(weight_scale.shape)}, expected float32 [{n}]")
    if qweight.dtype == torch.int8:
        qmax = P.qmax_for(config.weight_bits)
        if qweight.numel() and int(qweight.abs().max()) > qmax:
            raise ValueError(f"{name}: integer weights exceed +-{qmax} "
                             f"({config.weight_bits}-bit config {config.name!r})")
    if config.act_center != (weight_sum is not None):
        raise ValueError(f"{name}: weight sums {'missing' if config.act_center else 'present'}"
                         f" but config {config.name!r} has act_center={config.act_center}")
    if weight_sum is not None and (weight_sum.dtype != torch.float32
                                   or tuple(weight_sum.shape) != (n,)):
        raise ValueError(f"{name}: weight sums {weight_sum.dtype} {tuple(weight_sum.shape)}, "
                         f"expected float32 [{n}]")
    return qweight, weight_scale, weight_sum
