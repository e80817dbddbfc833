"""Controlled degradations (blur, Gaussian noise) used to test the evaluator's robustness.

Generated images are never as clean as rendered ones; these stand in for that in tests
and in the accuracy figures the evaluator reports.
"""

from __future__ import annotations

import numpy as np

from trdq.eval.metrics import filter_2d, gaussian_kernel


def degrade(
    sample: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_std: float = 0.0,
    blur_sigma: float = 0.0,
) -> np.ndarray:
    """Gaussian blur (sigma in pixels, edges replicated), then i.i.d. Gaussian noise (std in
    0-255 units), rounded and clipped back to uint8. Works on (H, W, 3) and (T, H, W, 3)."""
    if sample.ndim not in (3, 4):
        raise ValueError(f"expected (H, W, 3) or (T, H, W, 3), got shape {sample.shape}")
    values = sample.astype(np.float64)
    if blur_sigma > 0:
        spatial = (0, 1) if sample.ndim == 3 else (1, 2)
        values = filter_2d(values, gaussian_kernel(blur_sigma), spatial_axes=spatial, mode="same")
    if noise_std > 0:
        values = values + rng.normal(0.0, noise_std, size=values.shape)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
