"""The fixed train / held-out split of attribute combinations.

A full combination (every attribute of an image or video caption set) is held out when the
SHA-256 of its canonical text falls in the held-out bucket (`HELDOUT_PERCENT` of them). The
rule depends on nothing but the text, so the split is the same on every machine and in
every version that keeps the grammar; held-out combinations are never rendered for
training (partial training captions describe renders of training combinations only).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from functools import lru_cache
from typing import Literal

import numpy as np

from trdq.data.grammar import (
    COLORS,
    DIRECTIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    Caption,
)
from trdq.data.scene import Scene, scene_from

Kind = Literal["image", "video"]
Split = Literal["heldout", "train"]
SPLITS: tuple[Split, ...] = ("heldout", "train")

HELDOUT_PERCENT = 10
_SPLIT_SALT = "trdq-shapes-split-v1"


def _check_kind(kind: str) -> None:
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")


@lru_cache(maxsize=2)
def _all_combinations(kind: Kind) -> tuple[Caption, ...]:
    captions = []
    for color, background, shape, size in itertools.product(COLORS, COLORS, SHAPES, SIZES):
        if color == background:
            continue
        base = {"color": color, "background": background, "shape": shape, "size": size}
        if kind == "image":
            captions += [Caption(**base, position=p) for p in POSITIONS]
        else:
            captions += [Caption(**base, direction=d, speed=s) for d in DIRECTIONS for s in SPEEDS]
    return tuple(captions)


def all_captions(kind: Kind = "image") -> list[Caption]:
    """Every full combination of the given kind, in a fixed order."""
    _check_kind(kind)
    return list(_all_combinations(kind))


def is_heldout(caption: Caption) -> bool:
    """Whether a full combination belongs to the held-out split.

    Raises ValueError for a partial caption (the split is defined on full combinations).
    """
    if any(getattr(caption, name) is None for name in caption.attributes):
        raise ValueError(f"the split is defined on full captions, got {caption.text!r}")
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{caption.text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT


def train_captions(kind: Kind = "image") -> list[Caption]:
    """All training combinations of the given kind, in a fixed order."""
    return [c for c in all_captions(kind) if not is_heldout(c)]


def heldout_captions(
    n: int | None = None, seed: int = 0, kind: Kind = "image", partial: float = 0.0
) -> list[Caption]:
    """`n` held-out combinations (all when None), a fixed sample for a given seed.

    The sample is a prefix of one seeded permutation of the held-out pool, so a smaller
    request is the start of a larger one with the same seed (and `kind`, `partial`).
    `partial`: the fraction of the sample (rounded up) given as partial captions
    (`with_partial_captions`).
    """
    pool = [c for c in all_captions(kind) if is_heldout(c)]
    return with_partial_captions(_sample(pool, n, seed, kind), partial, seed)


def with_partial_captions(captions: list[Caption], fraction: float, seed: int) -> list[Caption]:
    """``captions`` with about ``fraction`` of them (rounded up, evenly spread: for 1/3
    items 0, 3, 6, ...) replaced by a partial caption of the same combination: random
    attributes dropped, at least one (`Caption.drop_attributes`). Item ``i`` depends on
    ``seed`` and ``i`` only, so a prefix of the list keeps its captions."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"partial must be in [0, 1], got {fraction}")
    out = []
    for i, caption in enumerate(captions):
        if math.ceil((i + 1) * fraction) > math.ceil(i * fraction):
            rng = np.random.default_rng([seed, i])
            partial = caption.drop_attributes(rng)
            while partial.is_complete:
                partial = caption.drop_attributes(rng)
            caption = partial
        out.append(caption)
    return out


def with_scenes(captions: list[Caption], fraction: float) -> list[Caption | Scene]:
    """``captions`` with about ``fraction`` of them (rounded up, evenly spread, as
    ``with_partial_captions``) replaced by a two-shape scene of that caption's shape and
    the next one's (``trdq.data.scene.scene_from``; the last pairs with the first)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"scenes must be in [0, 1], got {fraction}")
    out: list[Caption | Scene] = []
    for i, caption in enumerate(captions):
        if math.ceil((i + 1) * fraction) > math.ceil(i * fraction):
            out.append(scene_from(caption, captions[(i + 1) % len(captions)]))
        else:
            out.append(caption)
    return out


def split_prompts(
    split: Split, n: int | None = None, seed: int = 0, kind: Kind = "image",
    partial: float = 0.0, scenes: float = 0.0,
) -> list[str]:
    """Texts of `n` combinations of one split, sampled as `heldout_captions` samples
    (``partial`` of them as partial captions; then ``scenes`` of them, images only, as
    two-shape scenes: ``with_scenes``).

    The ``train`` sample is a development set: tuning a quantizer on it leaves the
    held-out combinations, on which results are reported, untouched.
    """
    if scenes and kind != "image":
        raise ValueError("two-shape scenes are images only")
    if split == "heldout":
        captions = heldout_captions(n, seed, kind, partial)
    elif split == "train":
        captions = with_partial_captions(_sample(train_captions(kind), n, seed, kind),
                                         partial, seed)
    else:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [c.text for c in with_scenes(captions, scenes)] if scenes else [
        c.text for c in captions]


def _sample(pool: list[Caption], n: int | None, seed: int, kind: Kind) -> list[Caption]:
    if n is None:
        return pool
    if not 0 <= n <= len(pool):
        raise ValueError(f"n must be in [0, {len(pool)}] for {kind}, got {n}")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in order]


def heldout_prompts(n: int | None = None, seed: int = 0, kind: Kind = "image") -> list[str]:
    """Texts of `heldout_captions(n, seed, kind)`."""
    return [c.text for c in heldout_captions(n, seed, kind)]
