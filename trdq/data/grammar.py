"""The caption grammar of the shapes world: attributes, text format and parser.

A caption describes one shape on a plain background. Images::

    a [SIZE] [COLOR] SHAPE [at the POSITION] [on a BACKGROUND background]

    "a small red circle at the top left on a white background"

Videos replace the position by a motion (the path is centred on the frame)::

    a [SIZE] [COLOR] SHAPE moving DIRECTION [SPEED] [on a BACKGROUND background]

    "a blue square moving right quickly on a black background"

Every attribute but the shape may be left out ("a red circle"): the field is then None in
`Caption` and `Caption.complete` fills it, with fixed defaults (`DEFAULTS`; the background
is black when the shape is white) or, given a generator, by sampling uniformly. The
renderer uses the fixed defaults; the evaluator scores only the attributes a caption names.
"an" replaces "a" before a vowel ("an orange circle"); the parser accepts either.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+; stubs ship with mypy

#: Shape colours and backgrounds (sRGB, 0-255). Pairwise distances are >= ~100 so the
#: nearest-palette classification tolerates imperfect generated colours.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (250, 230, 40),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "medium", "large")
#: 3x3 grid, row-major; phrased "at the <position>".
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SPEEDS: tuple[str, ...] = ("slowly", "quickly")

#: Attribute names in the order they are reported (`Caption` field names).
IMAGE_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "background")
VIDEO_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "direction", "speed", "background")

#: What `Caption.complete()` uses for a missing attribute when no generator is given.
DEFAULTS: dict[str, str] = {
    "color": "red",
    "size": "medium",
    "position": "center",
    "background": "white",
    "direction": "right",
    "speed": "slowly",
}
#: Background used by default when the shape itself has the default background colour.
FALLBACK_BACKGROUND = "black"

_FUNCTION_WORDS = ("a", "an", "at", "the", "on", "background", "moving")


class CaptionChanges(TypedDict, total=False):
    """The attributes `Caption.replace` may change (all but the shape); None drops one."""

    color: str | None
    size: str | None
    position: str | None
    background: str | None
    direction: str | None
    speed: str | None


class CaptionError(ValueError):
    """A caption that the grammar cannot produce (unknown word, bad order, clash)."""


def vocabulary() -> list[str]:
    """Every word the grammar can produce, lowercase, sorted, without duplicates."""
    words: set[str] = set(_FUNCTION_WORDS)
    for group in (COLORS, SHAPES, SIZES, POSITIONS, DIRECTIONS, SPEEDS):
        for phrase in group:
            words.update(phrase.split())
    return sorted(words)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Caption:
    """Structured caption; None means "not specified". A video caption has a direction."""

    shape: str
    color: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None
    direction: str | None = None
    speed: str | None = None

    def __post_init__(self) -> None:
        allowed = {
            "shape": SHAPES,
            "color": COLORS,
            "size": SIZES,
            "position": POSITIONS,
            "background": COLORS,
            "direction": DIRECTIONS,
            "speed": SPEEDS,
        }
        for name, values in allowed.items():
            value = getattr(self, name)
            if value is None and name != "shape":
                continue
            if value not in values:
                raise CaptionError(f"{name}={value!r} is not one of {list(values)}")
        if self.color is not None and self.color == self.background:
            raise CaptionError(f"shape and background are both {self.color}")
        if self.position is not None and self.is_video:
            raise CaptionError("a moving shape has no position (its path is centred)")
        if self.speed is not None and self.direction is None:
            raise CaptionError("a speed needs a direction ('moving right quickly')")

    @property
    def is_video(self) -> bool:
        return self.direction is not None

    @property
    def attributes(self) -> tuple[str, ...]:
        """Names of the attributes this kind of caption can carry (image or video)."""
        return VIDEO_ATTRIBUTES if self.is_video else IMAGE_ATTRIBUTES

    def specified(self) -> dict[str, str]:
        """The attributes this caption names, in report order."""
        return {n: getattr(self, n) for n in self.attributes if getattr(self, n) is not None}

    @property
    def is_complete(self) -> bool:
        """Every attribute of its kind is named (a full combination, not a partial caption)."""
        return len(self.specified()) == len(self.attributes)

    def drop_attributes(self, rng: np.random.Generator) -> Caption:
        """This caption with each attribute but the shape kept with probability 1/2, as a
        user might write "a red circle". A speed goes with its direction, and a video
        caption without its direction reads as an image caption."""
        kept = {
            name: getattr(self, name) if rng.random() < 0.5 else None
            for name in self.attributes
            if name != "shape"
        }
        if kept.get("direction") is None:
            kept.pop("speed", None)  # the grammar allows a speed only after a direction
        return Caption(shape=self.shape, **kept)

    @property
    def text(self) -> str:
        return format_caption(self)

    def complete(self, rng: np.random.Generator | None = None, *, video: bool = False) -> Caption:
        """Fill every missing attribute: fixed `DEFAULTS` without `rng`, else uniform samples.

        `video=True` also fills direction and speed (a caption with a direction is a video
        caption already). The background always differs from the shape colour.
        """
        is_video = video or self.is_video

        def pick(name: str, choices: tuple[str, ...]) -> str:
            current = getattr(self, name)
            if current is not None:
                return current
            if rng is None:
                return DEFAULTS[name]
            return choices[int(rng.integers(len(choices)))]

        # the shape's colour never equals a given background (nor the background a colour)
        color = self.color
        if color is None:
            free = tuple(c for c in COLORS if c != self.background)
            if rng is None:
                color = DEFAULTS["color"] if DEFAULTS["color"] in free else free[0]
            else:
                color = free[int(rng.integers(len(free)))]
        background = self.background
        if background is None:
            others = tuple(c for c in COLORS if c != color)
            if rng is None:
                background = DEFAULTS["background"]
                background = FALLBACK_BACKGROUND if background == color else background
            else:
                background = others[int(rng.integers(len(others)))]
        fields = {
            "shape": self.shape,
            "color": color,
            "size": pick("size", SIZES),
            "background": background,
        }
        if is_video:
            fields["direction"] = pick("direction", DIRECTIONS)
            fields["speed"] = pick("speed", SPEEDS)
        else:
            fields["position"] = pick("position", POSITIONS)
        return Caption(**fields)

    def replace(self, **changes: Unpack[CaptionChanges]) -> Caption:
        return dataclasses.replace(self, **changes)


def complete_text(text: str, seed: int, *, video: bool) -> str:
    """``text`` as a model of the shapes world is best given it: a partial caption with its
    unnamed attributes drawn from ``seed`` (``Caption.complete(rng)``), for a video model
    with motion. As written where that cannot apply: outside the grammar, motion asked of
    an image model, a position asked of a moving shape. A full caption completes to itself.
    """
    try:
        caption = parse_caption(text)
    except CaptionError:
        return text
    if caption.position is None if video else not caption.is_video:
        return caption.complete(np.random.default_rng(int(seed)), video=video).text
    return text


def format_caption(caption: Caption) -> str:
    """Caption -> text, the inverse of `parse_caption`."""
    noun_phrase = [w for w in (caption.size, caption.color, caption.shape) if w is not None]
    words = [_article(noun_phrase[0]), *noun_phrase]
    if caption.position is not None:
        words += ["at", "the", caption.position]
    if caption.direction is not None:
        words += ["moving", caption.direction]
        if caption.speed is not None:
            words.append(caption.speed)
    if caption.background is not None:
        words += ["on", _article(caption.background), caption.background, "background"]
    return " ".join(words)


# re.VERBOSE ignores literal spaces, so the two-word positions spell theirs as \s.
_POSITION_PATTERN = "|".join(
    p.replace(" ", r"\s") for p in sorted(POSITIONS, key=len, reverse=True)
)
_CAPTION_RE = re.compile(
    rf"""^an?\s
    (?:(?P<size>{"|".join(SIZES)})\s)?
    (?:(?P<color>{"|".join(COLORS)})\s)?
    (?P<shape>{"|".join(SHAPES)})
    (?:\sat\sthe\s(?P<position>{_POSITION_PATTERN}))?
    (?:\smoving\s(?P<direction>{"|".join(DIRECTIONS)})(?:\s(?P<speed>{"|".join(SPEEDS)}))?)?
    (?:\son\san?\s(?P<background>{"|".join(COLORS)})\sbackground)?$""",
    re.VERBOSE,
)


def parse_caption(text: str) -> Caption:
    """Text -> Caption. Case, surrounding spaces, repeated spaces and a final '.' are ignored.

    Raises `CaptionError` (a ValueError) for anything the grammar cannot produce.
    """
    normalized = " ".join(text.lower().strip().rstrip(".").split())
    match = _CAPTION_RE.match(normalized)
    if match is None:
        raise CaptionError(f"not a shapes caption: {text!r}")
    return Caption(**match.groupdict())
