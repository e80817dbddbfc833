import math

import numpy as np
import pytest

from trdq.eval.metrics import gaussian_kernel, psnr, ssim


def _naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Direct (unseparated) windowed SSIM on one channel, as in Wang et al. 2004."""
    taps = gaussian_kernel(1.5, 5)
    window = np.outer(taps, taps)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mu_a, mu_b = (window * a).sum(), (window * b).sum()
            var_a = (window * a * a).sum() - mu_a**2
            var_b = (window * b * b).sum() - mu_b**2
            cov = (window * a * b).sum() - mu_a * mu_b
            values.append(
                (2 * mu_a * mu_b + c1)
                * (2 * cov + c2)
                / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            )
    return float(np.mean(values))


def test_psnr_known_values():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    b = a + 5  # MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    video = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    noisy = video.copy()
    noisy[0] = 10  # MSE over the whole clip is 100 / 4
    assert psnr(video, noisy) == pytest.approx(10 * math.log10(255**2 / 25))


def test_ssim_matches_direct_definition():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(24, 20)).astype(np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-40, 40, size=x.shape), 0, 255).astype(np.uint8)
    assert ssim(x, y) == pytest.approx(_naive_ssim(x.astype(float), y.astype(float)), abs=1e-9)
    rgb_x, rgb_y = np.stack([x, y, x], -1), np.stack([y, y, x], -1)
    expected = (_naive_ssim(x * 1.0, y * 1.0) + 1.0 + 1.0) / 3
    assert ssim(rgb_x, rgb_y) == pytest.approx(expected, abs=1e-9)


def test_ssim_properties():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    noisy = [
        np.clip(image + rng.normal(0, s, image.shape), 0, 255).astype(np.uint8) for s in (5, 20)
    ]
    assert 1.0 > ssim(image, noisy[0]) > ssim(image, noisy[1])
    assert ssim(image, noisy[1]) == pytest.approx(ssim(noisy[1], image))
    video = np.stack([image, noisy[0]])
    other = np.stack([noisy[1], noisy[0]])
    assert ssim(video, other) == pytest.approx((ssim(image, noisy[1]) + 1.0) / 2)


def test_shape_errors():
    with pytest.raises(ValueError):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))  # smaller than the window
