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


def heldout_captions(n: int | None = None, seed: int = 0, kind: Kind = "image") -> list[Caption]:
    """`n` held-out combinations (all when None), a fixed sample for a given seed.

    The sample is a prefix of one seeded permutation of the held-out pool, so a smaller
    request is the start of a larger one with the same seed (and `kind`).
    """
    return _sample([c for c in all_captions(kind) if is_heldout(c)], n, seed, kind)


def split_prompts(
    split: Split, n: int | None = None, seed: int = 0, kind: Kind = "image"
) -> list[str]:
    """Texts of `n` combinations of one split, sampled as `heldout_captions` samples.

    The ``train`` sample is a development set: tuning a quantizer on it leaves the
    held-out combinations, on which results are reported, untouched.
    """
    if split == "heldout":
        return heldout_prompts(n, seed, kind)
    if split == "train":
        return [c.text for c in _sample(train_captions(kind), n, seed, kind)]
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


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
