"""The procedural "shapes" world: a caption grammar, a fixed split, and a renderer."""

from trdq.data.grammar import (
    COLORS,
    DIRECTIONS,
    IMAGE_ATTRIBUTES,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    VIDEO_ATTRIBUTES,
    Caption,
    CaptionError,
    format_caption,
    parse_caption,
    vocabulary,
)
from trdq.data.render import render_image, render_video
from trdq.data.split import (
    all_captions,
    heldout_captions,
    heldout_prompts,
    is_heldout,
    split_prompts,
    train_captions,
)

__all__ = [
    "COLORS",
    "DIRECTIONS",
    "IMAGE_ATTRIBUTES",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPEEDS",
    "VIDEO_ATTRIBUTES",
    "Caption",
    "CaptionError",
    "all_captions",
    "format_caption",
    "heldout_captions",
    "heldout_prompts",
    "is_heldout",
    "parse_caption",
    "render_image",
    "render_video",
    "split_prompts",
    "train_captions",
    "vocabulary",
]
