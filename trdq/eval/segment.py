"""Measuring the one shape in a frame: background, segmentation and sub-pixel features.

Numpy only (no scipy). A frame is analysed in four steps:

1. The background is the per-channel median of the frame's border (the renderer keeps
   shapes off the border), snapped to the nearest palette colour for the label.
2. Pixels farther from the observed background than 40% of the distance from that
   palette colour to its nearest other palette colour are foreground; the largest
   4-connected foreground component is the shape (specks of noise are other components).
3. The shape colour is the median of the component's interior (its most saturated
   pixels), and every pixel near the component gets an opacity `alpha` in [0, 1]: its
   projection on the background->shape colour segment. Integrals of `alpha` (area,
   centroid, moments) are unchanged by anti-aliasing and blur, which is why the features
   below use them and not pixel counts.
4. Features: area, mass centroid, the soft bounding box (widths from the column/row
   maxima of `alpha`), fill ratio (area / bbox area) and vertical skewness.

Before step 2 the frame is smoothed by a 3x3 binomial filter, which divides i.i.d. noise
by ~2.7 and leaves the blur-invariant integrals alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trdq.data.grammar import PALETTE

_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[n] for n in _PALETTE_NAMES], dtype=np.float32)
#: Opacity below this is treated as background noise (a dead zone; see `_opacity`).
_ALPHA_FLOOR = 0.12
_BORDER = 2
_SEE_THROUGH_COST = 0.3
#: Pixels around the shape kept for template matching (covers blur up to sigma ~2 px).
_WINDOW_MARGIN = 5


@dataclass(frozen=True)
class FrameFeatures:
    """What one frame shows; lengths are in pixels, `found` is False for an empty frame."""

    found: bool
    background: str
    background_rgb: np.ndarray
    color: str | None = None
    color_rgb: np.ndarray | None = None
    area: float = 0.0
    centroid: tuple[float, float] = (0.0, 0.0)  # (x, y) mass centroid, pixel units
    bbox_center: tuple[float, float] = (0.0, 0.0)  # (x, y) of the soft bounding box
    width: float = 0.0
    height: float = 0.0
    fill: float = 0.0  # area / (width * height)
    skew_y: float = 0.0  # skewness of the vertical mass distribution (< 0: heavy bottom)
    #: Linear opacity w.r.t. the palette colour (no dead zone, noise kept zero-mean) on
    #: `window` = (y0, y1, x0, x1), zero away from the shape; input of template matching.
    opacity: np.ndarray | None = None
    window: tuple[int, int, int, int] = (0, 0, 0, 0)


def nearest_palette(rgb: np.ndarray, exclude: str | None = None) -> str:
    """Name of the palette colour nearest to `rgb` (Euclidean in sRGB)."""
    distances = np.linalg.norm(_PALETTE_RGB - np.asarray(rgb, dtype=np.float32), axis=1)
    if exclude is not None:
        distances[_PALETTE_NAMES.index(exclude)] = np.inf
    return _PALETTE_NAMES[int(np.argmin(distances))]


def nearest_shape_color(rgb: np.ndarray, background_rgb: np.ndarray, background: str) -> str:
    """Palette colour (not the background) that best explains a possibly see-through pixel.

    A blurred small shape never reaches its own colour: its interior is a mix
    `bg + a * (c - bg)` with a < 1, which can sit nearer to a third palette colour (blue
    over red looks purple). Each candidate c is scored by the distance from `rgb` to the
    segment bg -> c plus a penalty `_SEE_THROUGH_COST * (1 - a) * |c - bg|` for the
    transparency it needs, so an opaque match still wins whenever there is one.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    bg = np.asarray(background_rgb, dtype=np.float32)
    best, best_cost = background, np.inf
    for name, color_rgb in zip(_PALETTE_NAMES, _PALETTE_RGB):
        if name == background:
            continue
        span = color_rgb - bg
        length_sq = max(float(span @ span), 1e-6)
        mix = float(np.clip((rgb - bg) @ span / length_sq, 0.0, 1.0))
        cost = float(np.linalg.norm(rgb - bg - mix * span))
        cost += _SEE_THROUGH_COST * (1.0 - mix) * np.sqrt(length_sq)
        if cost < best_cost:
            best, best_cost = name, cost
    return best


def _smooth(frame: np.ndarray) -> np.ndarray:
    """3x3 binomial filter ([1, 2, 1] / 4 separable) with edge replication; float32."""
    padded = np.pad(frame.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4


def border_pixels(frame: np.ndarray) -> np.ndarray:
    """The frame's outer band of pixels (the renderer keeps shapes off it), (N, 3)."""
    b = _BORDER
    return np.concatenate(
        [
            frame[:b].reshape(-1, 3),
            frame[-b:].reshape(-1, 3),
            frame[b:-b, :b].reshape(-1, 3),
            frame[b:-b, -b:].reshape(-1, 3),
        ]
    )


def _shift_min(values: np.ndarray) -> np.ndarray:
    """Minimum over each pixel and its 4 neighbours."""
    out = values.copy()
    np.minimum(out[1:], values[:-1], out=out[1:])
    np.minimum(out[:-1], values[1:], out=out[:-1])
    np.minimum(out[:, 1:], values[:, :-1], out=out[:, 1:])
    np.minimum(out[:, :-1], values[:, 1:], out=out[:, :-1])
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2-D boolean mask (empty in, empty out).

    Label propagation with pointer jumping: every pixel holds the smallest flat index (+1)
    seen in its component so far; a label is itself a pixel of the same component, so
    reading that pixel's label (jumping) shortens chains and converges in few rounds.
    """
    if not mask.any():
        return mask.copy()
    sentinel = mask.size + 1
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), sentinel)
    while True:
        spread = np.where(mask, _shift_min(labels), sentinel)
        flat = spread.reshape(-1)
        jumped = np.where(mask, flat[np.minimum(spread, mask.size) - 1], sentinel)
        jumped = np.minimum(jumped, spread)
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    counts = np.bincount(labels[mask])
    return labels == int(np.argmax(counts))


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` pixels (4-neighbourhood)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _opacity(frame: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Projection of each pixel on the bg->fg segment, with a dead zone at both ends.

    The linear remap around 0.5 keeps the half-coverage crossing (so widths and areas of
    anti-aliased edges stay unbiased) while zeroing small noise on background pixels.
    """
    direction = fg - bg
    raw = ((frame - bg) @ direction) / max(float(direction @ direction), 1e-6)
    return np.clip((raw - _ALPHA_FLOOR) / (1.0 - 2 * _ALPHA_FLOOR), 0.0, 1.0)


def _foreground_threshold(background: str) -> float:
    bg_rgb = np.asarray(PALETTE[background], dtype=np.float32)
    others = [
        np.linalg.norm(_PALETTE_RGB[i] - bg_rgb)
        for i, name in enumerate(_PALETTE_NAMES)
        if name != background
    ]
    return 0.4 * float(min(others))


def measure_frame(frame: np.ndarray) -> FrameFeatures:
    """Features of the single shape in a uint8 (H, W, 3) frame."""
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) frame, got shape {frame.shape}")
    smooth = _smooth(frame)
    bg_rgb = np.median(border_pixels(smooth), axis=0)
    background = nearest_palette(bg_rgb)
    distance = np.linalg.norm(smooth - bg_rgb, axis=-1)
    component = largest_component(distance > _foreground_threshold(background))
    if component.sum() < 4:
        return FrameFeatures(found=False, background=background, background_rgb=bg_rgb)

    inside = distance[component]
    interior = component & (distance >= 0.8 * np.percentile(inside, 90))
    fg_rgb = np.median(smooth[interior], axis=0)
    color = nearest_shape_color(fg_rgb, bg_rgb, background)

    near = dilate(component, 2)
    alpha = np.where(near, _opacity(smooth, bg_rgb, fg_rgb), 0.0)
    area = float(alpha.sum())
    ys, xs = np.arange(frame.shape[0]) + 0.5, np.arange(frame.shape[1]) + 0.5
    col_profile, row_profile = alpha.max(axis=0), alpha.max(axis=1)
    width, height = float(col_profile.sum()), float(row_profile.sum())
    mass_x = float(alpha.sum(axis=0) @ xs / area)
    row_mass = alpha.sum(axis=1)
    mass_y = float(row_mass @ ys / area)
    var_y = float(row_mass @ (ys - mass_y) ** 2 / area)
    skew_y = float(row_mass @ (ys - mass_y) ** 3 / area) / max(var_y, 1e-6) ** 1.5
    bbox_center = (
        float(col_profile @ xs / max(width, 1e-6)),
        float(row_profile @ ys / max(height, 1e-6)),
    )
    rows, cols = np.nonzero(component)
    height_px, width_px = component.shape
    y0, y1 = max(rows.min() - _WINDOW_MARGIN, 0), min(rows.max() + 1 + _WINDOW_MARGIN, height_px)
    x0, x1 = max(cols.min() - _WINDOW_MARGIN, 0), min(cols.max() + 1 + _WINDOW_MARGIN, width_px)
    span = np.asarray(PALETTE[color], dtype=np.float32) - bg_rgb
    linear = (smooth[y0:y1, x0:x1] - bg_rgb) @ span / max(float(span @ span), 1e-6)
    keep = dilate(component, _WINDOW_MARGIN - 1)[y0:y1, x0:x1]
    opacity = np.where(keep, np.clip(linear, -0.5, 1.5), 0.0)
    return FrameFeatures(
        found=True,
        opacity=opacity,
        window=(int(y0), int(y1), int(x0), int(x1)),
        background=background,
        background_rgb=bg_rgb,
        color=color,
        color_rgb=fg_rgb,
        area=area,
        centroid=(mass_x, mass_y),
        bbox_center=bbox_center,
        width=width,
        height=height,
        fill=area / max(width * height, 1e-6),
        skew_y=skew_y,
    )
