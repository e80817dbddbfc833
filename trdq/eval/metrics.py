"""Full-reference image metrics between uint8 images or videos: PSNR and SSIM (numpy).

Inputs are arrays of the same shape (H, W, C), (H, W) or (T, H, W, C) with values in
[0, 255] (uint8, or anything `np.asarray` turns into numbers: CPU torch tensors work).

- `psnr`: 10 log10(255^2 / MSE) over all elements (a video is one signal, not a mean of
  per-frame PSNRs); identical inputs give `math.inf`.
- `ssim`: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03, population (not sample) statistics, computed per channel on the "valid"
  region (no padding) and averaged over positions, channels and frames. This is
  `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)`, averaged over channels.
"""

from __future__ import annotations

import math

import numpy as np

DATA_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): 11 taps, as in skimage/MATLAB
_K1, _K2 = 0.01, 0.03


def _pair(a: object, b: object) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"expected (H, W), (H, W, C) or (T, H, W, C), got {x.shape}")
    return x, y


def psnr(reference: object, test: object) -> float:
    """Peak signal-to-noise ratio in dB for data range 255; inf when identical."""
    x, y = _pair(reference, test)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian taps over [-radius, radius] (default radius 3 sigma)."""
    radius = max(1, math.ceil(3 * sigma)) if radius is None else radius
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _filter_valid(values: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(values, taps.size, axis=axis)
    return windows @ taps


def filter_2d(
    values: np.ndarray,
    taps: np.ndarray,
    *,
    spatial_axes: tuple[int, int] = (0, 1),
    mode: str = "valid",
) -> np.ndarray:
    """Separable filter with `taps` along both spatial axes.

    mode "valid" drops the borders (output shrinks by len(taps) - 1); "same" pads by edge
    replication and keeps the shape.
    """
    out = np.asarray(values, dtype=np.float64)
    radius = taps.size // 2
    for axis in spatial_axes:
        if mode == "same":
            pad = [(0, 0)] * out.ndim
            pad[axis] = (radius, radius)
            out = np.pad(out, pad, mode="edge")
        elif mode != "valid":
            raise ValueError(f"mode must be 'valid' or 'same', got {mode!r}")
        out = _filter_valid(out, taps, axis)
    return out


def ssim(reference: object, test: object) -> float:
    """Mean structural similarity (Gaussian window), in [-1, 1]; 1 when identical."""
    x, y = _pair(reference, test)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if x.ndim == 3:
        x, y = x[None], y[None]
    if min(x.shape[1:3]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs frames of at least {2 * SSIM_RADIUS + 1} pixels a side")
    taps = gaussian_kernel(SSIM_SIGMA, SSIM_RADIUS)

    def blur(values: np.ndarray) -> np.ndarray:
        return filter_2d(values, taps, spatial_axes=(1, 2))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (_K1 * DATA_RANGE) ** 2, (_K2 * DATA_RANGE) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(numerator / denominator))
