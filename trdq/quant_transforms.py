"""The transforms of TR-DQ's quantized linear, shared by calibration, layers and backends.

A layer computes ``x W^T = (x / s) R (W s R)^T`` with ``s`` the SmoothQuant divisor (per
input channel, optional) and ``R`` the block-diagonal normalized Hadamard (optional):
the weight side (``transform_weight``) is folded and quantized once, offline; the
activation side (``smooth_and_rotate``) is what every backend applies online, and what
calibration searches on. Both live here, beside ``primitives`` and ``rotation``, rather
than in a layer or a backend: calibration, ``QuantLinear`` and the reference backend all
need exactly this arithmetic, and none of them should import another to get it.

Also here: ``LayerQuantParams``, the calibrated parameters of one layer (what calibration
produces, the cache stores and ``QuantLinear.from_linear`` consumes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from trdq import primitives as P
from trdq.rotation import hadamard_transform, rotate_weight

__all__ = [
    "LayerQuantParams",
    "centering_weight_sum",
    "prepare_activation",
    "quantize_transformed_weight",
    "smooth_and_rotate",
    "transform_weight",
]


@dataclass
class LayerQuantParams:
    """Calibrated parameters of one layer (what the cache stores per layer)."""

    #: block size of the Hadamard rotation, or None
    rotation_block: int | None
    #: SmoothQuant divisor [K] (float32) or None
    smooth_divisor: torch.Tensor | None
    #: [G, 2] static activation scales (uncond, cond)
    act_scale_by_group: torch.Tensor
    #: [G, 2] clip ratios (uncond, cond)
    clip_ratio_by_group: torch.Tensor
    #: [N] per-output-channel weight clip ratios (``weight_clip_search``) or None = min-max
    weight_clip: torch.Tensor | None = None
    #: [N, K] int8 integer weights rounded by calibration (``weight_rounding="gptq"``),
    #: on the smoothed, rotated weight's per-channel scales; None = round to nearest
    weight_q: torch.Tensor | None = None
    #: the low-rank error branch (``QuantConfig.low_rank``, trdq/low_rank.py): ``[N, r]``
    #: and ``[r, K]`` float32
    low_rank_up: torch.Tensor | None = None
    low_rank_down: torch.Tensor | None = None

    @classmethod
    def minmax_default(cls, num_groups: int, rotation_block: int | None) -> LayerQuantParams:
        """Uncalibrated placeholder: dynamic-safe clip 1, unit static scales."""
        return cls(
            rotation_block=rotation_block,
            smooth_divisor=None,
            act_scale_by_group=torch.ones(num_groups, 2),
            clip_ratio_by_group=torch.ones(num_groups, 2),
        )


def transform_weight(weight: torch.Tensor, smooth_divisor: torch.Tensor | None,
                     rotation_block: int | None) -> torch.Tensor:
    """The weight as the kernels multiply it, float32: smoothed (``W * s``), then rotated
    (``W R``). Calibration searches on exactly this, QuantLinear quantizes it."""
    w = weight.detach().float()
    if smooth_divisor is not None:
        w = w * smooth_divisor.to(w.device)[None, :]
    if rotation_block is not None:
        w = rotate_weight(w, rotation_block)
    return w


def quantize_transformed_weight(
    weight: torch.Tensor, bits: int, fp8: bool = False,
    clip: torch.Tensor | None = None, weight_q: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers or e4m3 ``[N, K]``, scale ``[N]``) for a ``transform_weight`` output:
    per-channel scales from the absmax (times the calibrated ``clip``), values rounded to
    nearest or, when calibration rounded them (``weight_q``), those integers."""
    n = weight.shape[0]
    if clip is not None and tuple(clip.shape) != (n,):
        raise ValueError(f"weight clip shaped {tuple(clip.shape)} for {n} output channels")
    q, scale = P.quantize_weight_per_channel(weight, bits, fp8=fp8, clip=clip)
    if weight_q is not None:
        if tuple(weight_q.shape) != tuple(q.shape):
            raise ValueError(f"calibrated weights shaped {tuple(weight_q.shape)} "
                             f"for a {tuple(q.shape)} layer")
        q = weight_q.to(device=q.device, dtype=torch.int8)
    return q, scale


def smooth_and_rotate(x: torch.Tensor, smooth_divisor: torch.Tensor | None,
                      rotation_block: int | None) -> torch.Tensor:
    """``[M, K]`` activations as the kernels quantize them, float32: divided by the
    smoothing vector, then block-rotated (``(x / s) R``)."""
    xf = x.float()
    if smooth_divisor is not None:
        xf = xf / smooth_divisor.float()
    if rotation_block is not None:
        xf = hadamard_transform(xf, rotation_block)
    return xf


class _ActivationTransform(Protocol):
    """What ``prepare_activation`` reads of a ``trdq.kernels.base.ActQuant``."""

    @property
    def smooth_divisor(self) -> torch.Tensor | None: ...

    @property
    def rotation_block(self) -> int | None: ...


def prepare_activation(x: torch.Tensor, act: _ActivationTransform) -> torch.Tensor:
    """``smooth_and_rotate`` with an ``ActQuant``'s smoothing vector and rotation."""
    return smooth_and_rotate(x, act.smooth_divisor, act.rotation_block)


def centering_weight_sum(
    qweight: torch.Tensor, weight_scale: torch.Tensor,
    smooth_divisor: torch.Tensor | None, rotation_block: int | None,
) -> torch.Tensor:
    """``[N]`` row sums of the effective weight, as centred activations need them: what the
    backend multiplies an all-ones row by (smoothed and rotated like any row, times the
    dequantized ``qweight``), so ``x W^T = (x - c) W^T + c * weight_sum`` holds exactly for
    the layer as quantized."""
    device = qweight.device
    smooth = None if smooth_divisor is None else smooth_divisor.to(device)
    ones = smooth_and_rotate(torch.ones(1, qweight.shape[1], device=device), smooth,
                             rotation_block)
    return (qweight.float() * weight_scale.float()[:, None]) @ ones[0]
