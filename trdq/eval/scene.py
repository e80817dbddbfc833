"""Reading a two-shape scene back (``trdq.data.scene``): each shape on its own, then scored.

The one-shape reader (``trdq.eval.shapes.predict_image``) measures the largest foreground
component of a frame. A scene's two shapes stand two grid cells apart, so they are two
components: the largest is one shape, the largest of what is left (away from the first)
the other. Each is read from a copy of the image with the other painted over in the
background colour. The two readings are matched to the scene's two captions in the order
that scores more attributes right (a model may draw them the other way round).

Scores are keyed ``first.<attribute>``, ``second.<attribute>`` and ``background``, over the
attributes the scene names, like ``trdq.eval.shapes.score``.
"""

from __future__ import annotations

import numpy as np

from trdq.data.scene import Scene, parse_scene
from trdq.eval.segment import border_pixels, dilate, largest_component
from trdq.eval.shapes import Prediction, predict_image

__all__ = ["by_attribute", "evaluate_scene", "predict_scene"]

#: pixels around a found shape also painted over (its anti-aliased edge)
_MARGIN = 3


def predict_scene(image: np.ndarray) -> tuple[Prediction, Prediction] | None:
    """The two shapes' readings (largest first), or None when fewer than two are found."""
    background = np.median(border_pixels(image).astype(np.float32), axis=0)
    distance = np.abs(image.astype(np.float32) - background).max(axis=-1)
    foreground = distance > 48  # palette colours stand >= ~100 apart in some channel
    first = largest_component(foreground)
    second = largest_component(foreground & ~dilate(first, _MARGIN))
    if not first.any() or second.sum() < 4:
        return None
    fill = np.clip(np.rint(background), 0, 255).astype(image.dtype)
    readings = []
    for hidden in (second, first):
        alone = image.copy()
        alone[dilate(hidden, _MARGIN)] = fill
        readings.append(predict_image(alone))
    return readings[0], readings[1]


def _score_pair(first: Prediction, second: Prediction, scene: Scene) -> dict[str, bool]:
    out = {f"first.{name}": first.get(name) == value
           for name, value in scene.first.specified().items()}
    out.update({f"second.{name}": second.get(name) == value
                for name, value in scene.second.specified().items()})
    if scene.background is not None:
        out["background"] = first.background == scene.background
    return out


def evaluate_scene(image: np.ndarray, scene: Scene | str) -> dict[str, bool]:
    """Per-attribute correctness of an image (H, W, 3) against a scene (every attribute
    False where two shapes are not found)."""
    scene = parse_scene(scene) if isinstance(scene, str) else scene
    readings = predict_scene(image)
    if readings is None:
        empty = Prediction(shape=None, color=None, size=None, background=None)
        return {name: False for name in _score_pair(empty, empty, scene)}
    ordered = _score_pair(readings[0], readings[1], scene)
    swapped = _score_pair(readings[1], readings[0], scene)
    return ordered if sum(ordered.values()) >= sum(swapped.values()) else swapped


def by_attribute(scores: dict[str, bool]) -> dict[str, bool]:
    """``evaluate_scene``'s scores under the one-shape attribute names: an attribute is
    right when both shapes that name it have it right (the report's columns stay the
    grammar's)."""
    out: dict[str, bool] = {}
    for key, right in scores.items():
        name = key.split(".", 1)[-1]
        out[name] = out.get(name, True) and right
    return out
