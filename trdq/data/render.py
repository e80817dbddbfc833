"""Deterministic, anti-aliased rendering of shapes captions to uint8 frames.

Geometry is in fractions of the frame so any size works: a shape's bounding box is a square
of side `SIZE_EXTENT[size] * min(height, width)`, centred on its position (a 3x3 grid of
centres at `GRID` fractions of width and height). A moving shape travels along the
direction on a path centred on the frame centre, `TRAVEL[speed]` of the frame long, at a
constant speed from the first frame to the last, so it stays inside the frame.

Coverage is computed exactly on a supersampled grid (`s x s` point samples per pixel, with
`s * min(height, width) >= 512`), then the shape colour is blended over the background.
Missing caption attributes are filled by `Caption.complete`: fixed defaults, or samples
from `rng` when given. With an `rng` the layout is also jittered a little (position by up
to `POSITION_JITTER` of the frame, size by up to `SIZE_JITTER` relative) so that training
images of one caption differ; the jitter keeps every attribute inside its class as the
evaluator draws the classes. Without an `rng` the output depends only on the caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trdq.data.grammar import PALETTE, Caption, parse_caption

#: Side of the shape's bounding box as a fraction of min(height, width).
SIZE_EXTENT: dict[str, float] = {"small": 0.14, "medium": 0.22, "large": 0.32}
#: Centres of the 3x3 grid cells (fraction of the frame); class boundaries are at 1/3, 2/3.
GRID: tuple[float, float, float] = (0.22, 0.5, 0.78)
_ROW = {"top": 0, "bottom": 2}
_COL = {"left": 0, "right": 2}
#: Path length of a moving shape over the clip, as a fraction of the frame along the motion.
TRAVEL: dict[str, float] = {"slowly": 0.24, "quickly": 0.48}
#: Unit displacement (dx, dy) per direction; y grows downwards, as in image rows.
DIRECTION_VECTOR: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
POSITION_JITTER = 0.04
SIZE_JITTER = 0.06
_MIN_SUPERSAMPLED = 512


@dataclass(frozen=True)
class Layout:
    """Where the shape is: bbox centres per frame (x, y fractions) and bbox side fraction."""

    centers: np.ndarray  # (T, 2) float64, fractions of (width, height)
    extent: float  # side of the bbox as a fraction of min(height, width)


def grid_center(position: str) -> tuple[float, float]:
    """(x, y) fractions of the centre of a grid position ("top left" -> (0.22, 0.22))."""
    words = position.split()
    row = next((_ROW[w] for w in words if w in _ROW), 1)
    col = next((_COL[w] for w in words if w in _COL), 1)
    return GRID[col], GRID[row]


def layout(caption: Caption, num_frames: int = 1, rng: np.random.Generator | None = None) -> Layout:
    """Bounding-box placement of a complete caption over `num_frames` frames."""
    extent = SIZE_EXTENT[caption.size or "medium"]
    jitter = np.zeros(2)
    if rng is not None:
        extent *= 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
        jitter = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    if caption.is_video:
        dx, dy = DIRECTION_VECTOR[caption.direction or "right"]
        travel = TRAVEL[caption.speed or "slowly"]
        phase = np.linspace(-0.5, 0.5, num_frames) if num_frames > 1 else np.zeros(1)
        centers = 0.5 + jitter + travel * phase[:, None] * np.array([dx, dy], dtype=float)
    else:
        center = np.array(grid_center(caption.position or "center")) + jitter
        centers = np.repeat(center[None, :], num_frames, axis=0)
    return Layout(centers=centers, extent=float(extent))


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in bbox coordinates u, v in [-0.5, 0.5] (v grows downwards)."""
    if shape == "circle":
        return u * u + v * v <= 0.25
    if shape == "square":
        return (np.abs(u) <= 0.5) & (np.abs(v) <= 0.5)
    if shape == "triangle":  # apex up, base at the bottom, as wide as it is tall
        return (v >= -0.5) & (v <= 0.5) & (np.abs(u) <= (v + 0.5) / 2)
    if shape == "cross":  # plus sign, arms one third of the side wide
        arm = 1.0 / 6.0
        vertical = (np.abs(u) <= arm) & (np.abs(v) <= 0.5)
        horizontal = (np.abs(v) <= arm) & (np.abs(u) <= 0.5)
        return vertical | horizontal
    raise ValueError(f"unknown shape {shape!r}")


def coverage(
    shape: str, height: int, width: int, center: tuple[float, float], extent: float
) -> np.ndarray:
    """Fraction of each pixel covered by the shape, float32 (height, width) in [0, 1]."""
    side_px = extent * min(height, width)
    cx, cy = center[0] * width, center[1] * height
    factor = max(4, -(-_MIN_SUPERSAMPLED // min(height, width)))
    alpha = np.zeros((height, width), dtype=np.float32)
    # Only the pixels around the bbox can be covered; sample those.
    x0, x1 = (
        max(int(np.floor(cx - side_px / 2)) - 1, 0),
        min(int(np.ceil(cx + side_px / 2)) + 1, width),
    )
    y0, y1 = (
        max(int(np.floor(cy - side_px / 2)) - 1, 0),
        min(int(np.ceil(cy + side_px / 2)) + 1, height),
    )
    if x1 <= x0 or y1 <= y0:
        return alpha
    offsets = (np.arange(factor) + 0.5) / factor
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1)
    u = ((xs - cx) / side_px)[None, :]
    v = ((ys - cy) / side_px)[:, None]
    hits = _inside(shape, u, v).astype(np.float32)
    hits = hits.reshape(y1 - y0, factor, x1 - x0, factor).mean(axis=(1, 3))
    alpha[y0:y1, x0:x1] = hits
    return alpha


def blend_over(base: np.ndarray, alpha: np.ndarray, color: str) -> np.ndarray:
    """``color`` blended over ``base`` (H, W, 3) with coverage ``alpha`` (H, W); uint8."""
    fg = np.asarray(PALETTE[color], dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)  # a C-order image out, as before
    rgb = base + alpha[..., None] * (fg - base)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _composite(alpha: np.ndarray, full: Caption) -> np.ndarray:
    """Blend the shape's colour over the background; `full` comes from `Caption.complete`,
    which sets both colours."""
    assert full.color is not None and full.background is not None, "caption not completed"
    bg = np.asarray(PALETTE[full.background], dtype=np.float32)
    return blend_over(np.broadcast_to(bg, (*alpha.shape, 3)), alpha, full.color)


def _as_caption(caption: Caption | str) -> Caption:
    return parse_caption(caption) if isinstance(caption, str) else caption


def render_image(
    caption: Caption | str,
    height: int = 128,
    width: int | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render an image caption to uint8 (height, width, 3); a motion caption is refused."""
    caption = _as_caption(caption)
    if caption.is_video:
        raise ValueError(f"{caption.text!r} describes a video; use render_video")
    full = caption.complete(rng)
    width = height if width is None else width
    placed = layout(full, 1, rng)
    alpha = coverage(full.shape, height, width, tuple(placed.centers[0]), placed.extent)
    return _composite(alpha, full)


def render_video(
    caption: Caption | str,
    num_frames: int = 16,
    height: int = 64,
    width: int | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render a caption as uint8 (num_frames, height, width, 3).

    A caption without motion gets the default motion ("moving right slowly") or, with
    `rng`, a sampled one; an image caption with a position is refused.
    """
    caption = _as_caption(caption)
    if caption.position is not None:
        raise ValueError(f"{caption.text!r} has a position; video captions have a motion")
    full = caption.complete(rng, video=True)
    width = height if width is None else width
    placed = layout(full, num_frames, rng)
    alpha = np.stack(
        [coverage(full.shape, height, width, tuple(c), placed.extent) for c in placed.centers]
    )
    return _composite(alpha, full)
