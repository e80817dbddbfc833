"""Analytic attribute evaluator for shapes images and videos (no learned weights).

`predict_image` / `predict_video` read uint8 frames and return a `Prediction` of every
attribute; `score` compares it with a `Caption` on the attributes the caption names, and
`evaluate` does both. The decision rules use the blur-invariant features of
`trdq.eval.segment.measure_frame`:

- background / colour: nearest palette colour to the border median / shape interior median;
- shape: vertical skewness < `TRIANGLE_SKEW` is the apex-up triangle (its mass sits low);
  otherwise the fill ratio (area / soft bbox area) separates cross (5/9), circle (pi/4)
  and square (1) at the midpoints `CROSS_CIRCLE_FILL`, `CIRCLE_SQUARE_FILL`;
- size: the side of the shape's bbox recovered from its area and the predicted shape's
  nominal fill, `sqrt(area / fill)`, against the geometric means of the renderer's sizes;
- position: the bbox centre (mass centroid, minus the triangle's known offset), in thirds;
- video motion: a least-squares line through the per-frame centroids gives the total
  displacement; its dominant axis and sign give the direction, its length (as a fraction
  of the frame) against the geometric mean of the renderer's travels gives the speed.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from trdq.data.grammar import IMAGE_ATTRIBUTES, VIDEO_ATTRIBUTES, Caption, parse_caption
from trdq.data.render import SIZE_EXTENT, TRAVEL
from trdq.eval.segment import FrameFeatures, measure_frame, nearest_palette

TRIANGLE_SKEW = -0.2
CROSS_CIRCLE_FILL = 0.5 * (5 / 9 + math.pi / 4) + 0.06  # cross fill grows under blur/noise
CIRCLE_SQUARE_FILL = 0.5 * (math.pi / 4 + 1.0)
NOMINAL_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}
#: The triangle's mass centroid lies 1/6 of its side below its bbox centre.
_CENTROID_OFFSET_Y = {"triangle": 1 / 6}
_SIZE_NAMES = tuple(SIZE_EXTENT)
_SIZE_BOUNDS = tuple(
    math.sqrt(SIZE_EXTENT[a] * SIZE_EXTENT[b]) for a, b in itertools.pairwise(_SIZE_NAMES)
)
_SPEED_BOUND = math.sqrt(TRAVEL["slowly"] * TRAVEL["quickly"])
_THIRD_BOUNDS = (1 / 3, 2 / 3)
_ROWS, _COLS = ("top", "", "bottom"), ("left", "", "right")


@dataclass(frozen=True)
class Prediction:
    """Predicted attributes (None when not measurable) plus the numbers behind them."""

    shape: str | None
    color: str | None
    size: str | None
    background: str | None
    position: str | None = None
    direction: str | None = None
    speed: str | None = None
    measurements: dict[str, float] = field(default_factory=dict, compare=False)

    def get(self, attribute: str) -> str | None:
        return getattr(self, attribute)


def classify_shape(fill: float, skew_y: float) -> str:
    if skew_y < TRIANGLE_SKEW:
        return "triangle"
    if fill < CROSS_CIRCLE_FILL:
        return "cross"
    return "circle" if fill < CIRCLE_SQUARE_FILL else "square"


def classify_size(extent_fraction: float) -> str:
    """Size class of a bbox side given as a fraction of min(height, width)."""
    index = sum(extent_fraction >= bound for bound in _SIZE_BOUNDS)
    return _SIZE_NAMES[index]


def classify_position(x_fraction: float, y_fraction: float) -> str:
    col = sum(x_fraction >= b for b in _THIRD_BOUNDS)
    row = sum(y_fraction >= b for b in _THIRD_BOUNDS)
    words = " ".join(w for w in (_ROWS[row], _COLS[col]) if w)
    return words or "center"


def _shape_extent(features: FrameFeatures, shape: str, frame_shape: tuple[int, ...]) -> float:
    return math.sqrt(features.area / NOMINAL_FILL[shape]) / min(frame_shape[:2])


def _bbox_center(features: FrameFeatures, shape: str, extent_px: float) -> tuple[float, float]:
    x, y = features.centroid
    return x, y - _CENTROID_OFFSET_Y.get(shape, 0.0) * extent_px


def predict_image(image: np.ndarray) -> Prediction:
    """Attributes of a uint8 (H, W, 3) image."""
    features = measure_frame(image)
    if not features.found:
        return Prediction(shape=None, color=None, size=None, background=features.background)
    shape = classify_shape(features.fill, features.skew_y)
    extent = _shape_extent(features, shape, image.shape)
    cx, cy = _bbox_center(features, shape, extent * min(image.shape[:2]))
    x_frac, y_frac = cx / image.shape[1], cy / image.shape[0]
    return Prediction(
        shape=shape,
        color=features.color,
        size=classify_size(extent),
        background=features.background,
        position=classify_position(x_frac, y_frac),
        measurements={
            "fill": features.fill,
            "skew_y": features.skew_y,
            "extent": extent,
            "x": x_frac,
            "y": y_frac,
        },
    )


def _majority(values: Iterable[str | None]) -> str | None:
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def predict_video(video: np.ndarray) -> Prediction:
    """Attributes of a uint8 (T, H, W, 3) video: per-frame votes plus the centroid track."""
    if video.ndim != 4:
        raise ValueError(f"expected a (T, H, W, 3) video, got shape {video.shape}")
    frames = [measure_frame(frame) for frame in video]
    background = nearest_palette(np.median([f.background_rgb for f in frames], axis=0))
    found = [(t, f) for t, f in enumerate(frames) if f.found]
    if not found:
        return Prediction(shape=None, color=None, size=None, background=background)
    fill = float(np.median([f.fill for _, f in found]))
    skew = float(np.median([f.skew_y for _, f in found]))
    shape = classify_shape(fill, skew)
    extent = float(np.median([_shape_extent(f, shape, video.shape[1:]) for _, f in found]))
    color = _majority(f.color for _, f in found if f.color != background)
    direction = speed = None
    dx = dy = 0.0
    if len(found) >= 2:
        times = np.array([t for t, _ in found], dtype=float)
        track = np.array([f.centroid for _, f in found]) / np.array(video.shape[2:0:-1])
        slope_x, slope_y = np.polyfit(times, track, 1)[0]
        span = video.shape[0] - 1
        dx, dy = float(slope_x * span), float(slope_y * span)
        if abs(dx) >= abs(dy):
            direction, travel = ("right" if dx > 0 else "left"), abs(dx)
        else:
            direction, travel = ("down" if dy > 0 else "up"), abs(dy)
        speed = "quickly" if travel >= _SPEED_BOUND else "slowly"
    return Prediction(
        shape=shape,
        color=color,
        size=classify_size(extent),
        background=background,
        direction=direction,
        speed=speed,
        measurements={
            "fill": fill,
            "skew_y": skew,
            "extent": extent,
            "dx": dx,
            "dy": dy,
            "frames_found": float(len(found)),
        },
    )


def score(prediction: Prediction, caption: Caption | str) -> dict[str, bool]:
    """Per-attribute correctness on the attributes `caption` names, in report order."""
    caption = parse_caption(caption) if isinstance(caption, str) else caption
    return {name: prediction.get(name) == value for name, value in caption.specified().items()}


def evaluate(sample: np.ndarray, caption: Caption | str) -> dict[str, bool]:
    """Score an image (H, W, 3) or video (T, H, W, 3) against its caption."""
    if sample.ndim == 3:
        prediction = predict_image(sample)
    elif sample.ndim == 4:
        prediction = predict_video(sample)
    else:
        raise ValueError(f"expected (H, W, 3) or (T, H, W, 3), got shape {sample.shape}")
    return score(prediction, caption)


def summarize(scores: Iterable[Mapping[str, bool]]) -> tuple[float, dict[str, float]]:
    """(fraction of samples with every attribute right, per-attribute accuracy).

    Per-attribute accuracy is over the samples whose caption names that attribute; the
    attributes are reported in the grammar's order (image then video-only ones).
    """
    scores = list(scores)
    if not scores:
        return 0.0, {}
    all_right = sum(all(s.values()) for s in scores) / len(scores)
    order = list(dict.fromkeys(IMAGE_ATTRIBUTES + VIDEO_ATTRIBUTES))
    per_attribute = {}
    for name in order:
        values = [s[name] for s in scores if name in s]
        if values:
            per_attribute[name] = sum(values) / len(values)
    return all_right, per_attribute
