"""The released code's calibration (``faithful`` presets): per timestep range, a smoothing
divisor from the EMA of the activations' absmax and a DuQuant rotation fitted to the
smoothed absmax (TRDQ-RELEASED.md)."""

from __future__ import annotations

import torch
from torch import nn

from trdq.calibration.collect import LayerStats
from trdq.calibration.result import FaithfulParams
from trdq.config import QuantConfig
from trdq.rotation import DuQuantRotation, hadamard_block_size

__all__ = ["solve_faithful"]


def solve_faithful(linear: nn.Linear, st: LayerStats, config: QuantConfig,
                   generator: torch.Generator) -> FaithfulParams:
    """Per-range smoothing and rotations for one layer; a range never seen borrows the
    nearest seen range's statistics."""
    k = linear.in_features
    w_abs = linear.weight.detach().float().abs().amax(dim=0).cpu().clamp_min(1e-5)
    seen = [g for g in range(config.num_groups) if st.ema_seen[g]]
    a = config.smoothing_alpha
    smooth = torch.ones(config.num_groups, k)
    rotations = []
    block = hadamard_block_size(k, config.rotation_block_size)
    for g in range(config.num_groups):
        src = g if st.ema_seen[g] else min(seen, key=lambda s: (abs(s - g), s)) if seen else None
        absmax = st.ema[src] if src is not None else torch.ones(k)
        absmax = torch.where(absmax == 0, torch.full_like(absmax, 1e-5), absmax)
        if config.smoothing:
            smooth[g] = (absmax.pow(a) / w_abs.pow(1 - a)).clamp_min(1e-5)
        rotations.append(DuQuantRotation.fit(absmax / smooth[g], block, generator))
    return FaithfulParams(smooth, rotations if block >= 8 else None)
