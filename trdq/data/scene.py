"""Two-shape scenes of the shapes world (issue #25's harder image evaluation): grammar,
completion and rendering. Images only.

A scene joins two image captions with "and" and puts one background after both::

    a [SIZE] [COLOR] SHAPE [at the POSITION] and a [SIZE] [COLOR] SHAPE [at the POSITION]
      [on a BACKGROUND background]

    "a small red circle at the top left and a blue square at the bottom right"

Every attribute but the shapes may be left out, as in one-shape captions. The two shapes
stand two grid cells apart (rows or columns 0 and 2: "top left" and "top right", "left" and
"right", ...), so that even two large ones never touch and each can be read back on its own
(``trdq.eval.scene``); ``Scene`` refuses closer positions, and the center (no cell is two
away from it). Both shape colours differ from
the background (they may equal each other). "and" is already in the zoo tokenizer's words.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from trdq.data.grammar import COLORS, POSITIONS, Caption, CaptionError, parse_caption
from trdq.data.render import blend_over, coverage, layout
from trdq.data.render import render_image as render_one

__all__ = ["Scene", "far_apart", "parse_prompt", "parse_scene", "render_scene", "scene_from"]

_GRID_CELL = {p: divmod(i, 3) for i, p in enumerate(POSITIONS)}  # (row, column)


def far_apart(first: str, second: str) -> bool:
    """Whether two grid positions are two cells apart in rows or in columns."""
    (r1, c1), (r2, c2) = _GRID_CELL[first], _GRID_CELL[second]
    return max(abs(r1 - r2), abs(c1 - c2)) == 2


@dataclass(frozen=True)
class Scene:
    """Two image captions without backgrounds, and the scene's background (None: unnamed)."""

    first: Caption
    second: Caption
    background: str | None = None

    def __post_init__(self) -> None:
        for shape in (self.first, self.second):
            if shape.is_video or shape.background is not None:
                raise CaptionError("a scene's shapes have no motion and no background of "
                                   "their own")
            if self.background is not None and shape.color == self.background:
                raise CaptionError(f"a {shape.color} shape on a {self.background} background")
        p1, p2 = self.first.position, self.second.position
        if "center" in (p1, p2):
            raise CaptionError("a scene has no shape at the center (no cell is two away)")
        if p1 is not None and p2 is not None and not far_apart(p1, p2):
            raise CaptionError(f"the shapes at the {p1} and the {p2} are too close "
                               "(a scene puts them two grid cells apart)")

    @property
    def text(self) -> str:
        # the scene's background phrase is the grammar's, after the second shape
        return f"{self.first.text} and {replace(self.second, background=self.background).text}"

    @property
    def is_complete(self) -> bool:
        return (self.background is not None
                and all(len(s.specified()) == len(s.attributes) - 1  # all but background
                        for s in (self.first, self.second)))

    def complete(self, rng: np.random.Generator | None = None) -> Scene:
        """Every unnamed attribute filled (uniformly with ``rng``, else the grammar's
        defaults and the first far-apart position): two positions two cells apart, both
        colours unlike the background."""
        background = self.background
        if background is None:
            taken = {s.color for s in (self.first, self.second)} - {None}
            free = [c for c in COLORS if c not in taken]
            background = free[int(rng.integers(len(free)))] if rng is not None else (
                "white" if "white" in free else free[0])
        def pick(options: list[str], default: int) -> str:
            return options[int(rng.integers(len(options)))] if rng is not None else options[default]

        p2 = self.second.position
        p1 = self.first.position or pick(
            [p for p in POSITIONS if p != "center" and (p2 is None or far_apart(p, p2))], 0)
        p2 = p2 or pick([p for p in POSITIONS if far_apart(p1, p)], -1)
        first = replace(self.first, background=background, position=p1).complete(rng)
        second = replace(self.second, background=background, position=p2).complete(rng)
        return Scene(replace(first, background=None), replace(second, background=None),
                     background)


def parse_scene(text: str) -> Scene:
    """Text -> Scene (case, spaces and a final '.' ignored). Raises ``CaptionError``."""
    normalized = " ".join(text.lower().strip().rstrip(".").split())
    parts = normalized.split(" and ")
    if len(parts) != 2:
        raise CaptionError(f"not a two-shape scene: {text!r}")
    first, second = parse_caption(parts[0]), parse_caption(parts[1])
    if first.background is not None:
        raise CaptionError("a scene names its background once, after both shapes")
    background = second.background
    return Scene(first, replace(second, background=None), background)


def parse_prompt(text: str) -> Caption | Scene:
    """A prompt of the shapes world: a two-shape scene when it joins two shapes with
    "and", else a one-shape caption."""
    return parse_scene(text) if " and " in f" {text.lower()} " else parse_caption(text)


def scene_from(first: Caption, second: Caption) -> Scene:
    """A scene of two image captions' shapes: their colours and sizes, no positions (the
    completion places them), the first caption's background where both colours allow it."""
    background = first.background
    if background in (first.color, second.color):
        background = None
    return Scene(replace(first, position=None, background=None),
                 replace(second, position=None, background=None), background)


def render_scene(scene: Scene | str, height: int = 128, width: int | None = None, *,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """A scene as uint8 (height, width, 3): both shapes blended over the background."""
    scene = parse_scene(scene) if isinstance(scene, str) else scene
    full = scene.complete(rng)
    width = height if width is None else width
    # the first shape as a one-shape image, the second blended over it
    image = render_one(replace(full.first, background=full.background), height, width, rng=rng)
    second = replace(full.second, background=full.background)
    placed = layout(second, 1, rng)
    alpha = coverage(second.shape, height, width, tuple(placed.centers[0]), placed.extent)
    assert second.color is not None  # completed
    return blend_over(image, alpha, second.color)
