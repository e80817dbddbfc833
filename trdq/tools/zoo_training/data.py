"""Training data for the zoo: rendered shapes from the TRAIN split, with caption variants.

Every training combination (`trdq.data.train_captions`) is rendered `renders_per_caption`
times with the renderer's layout jitter (a seeded generator per render, so the set is the
same for a given seed). Each render gets `CAPTION_VARIANTS` texts: the full caption and
partial ones (attributes dropped at random, as a user might write "a red circle"); the
picture always shows the full training combination, so a partial caption learns the
marginal over what it leaves out. Held-out combinations are never rendered.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass, replace

import numpy as np
import torch

from trdq.data import Caption, render_image, render_video, train_captions
from trdq.data.scene import Scene, far_apart, render_scene

logger = logging.getLogger(__name__)

#: Texts per render: index 0 is the full caption, the rest are partial.
CAPTION_VARIANTS = 4
#: Token length used in training; the longest grammar caption is 13 tokens with </s>.
TRAIN_TOKEN_LENGTH = 32


@dataclass
class ShapesSet:
    """Rendered samples and their caption texts (one row of variants per sample)."""

    pixels: np.ndarray  # uint8 (N, H, W, 3) images or (N, T, H, W, 3) videos
    texts: list[list[str]]  # N rows of CAPTION_VARIANTS texts, full caption first

    def __len__(self) -> int:
        return len(self.texts)


def caption_variants(caption: Caption, rng: np.random.Generator, count: int) -> list[str]:
    """The full caption text, then `count - 1` texts that drop random attributes."""
    return [caption.text, *(caption.drop_attributes(rng).text for _ in range(count - 1))]


def scene_partner(caption: Caption, pool: list[Caption], rng: np.random.Generator,
                  cache: dict[tuple, list[Caption]] | None = None) -> Caption | None:
    """A training caption to share a two-shape scene with ``caption`` (issue #25): same
    background, a position two grid cells away (``trdq.data.scene.far_apart``), so each
    shape of the scene is itself a training combination; None where the pool has none.
    ``cache``: the candidates per (background, position), kept across calls on one pool."""
    if caption.position is None or caption.position == "center":
        return None
    key = (caption.background, caption.position)
    partners = None if cache is None else cache.get(key)
    if partners is None:
        partners = [c for c in pool if c.background == caption.background
                    and c.position not in (None, "center")
                    and far_apart(caption.position, c.position)]
        if cache is not None:
            cache[key] = partners
    return partners[int(rng.integers(len(partners)))] if partners else None


def scene_variants(scene: Scene, rng: np.random.Generator, count: int) -> list[str]:
    """The full scene text, then ``count - 1`` texts dropping random attributes of each
    shape (and the background with probability 1/2), as ``caption_variants`` does."""
    variants = [scene.text]
    for _ in range(count - 1):
        first, second = (replace(c.drop_attributes(rng), background=None)
                         for c in (replace(scene.first, background=scene.background),
                                   replace(scene.second, background=scene.background)))
        background = scene.background if rng.random() < 0.5 else None
        variants.append(Scene(first, second, background).text)
    return variants


def _render(job: tuple[str, Caption | Scene, int, int, int]) -> np.ndarray:
    kind, caption, size, frames, seed = job
    rng = np.random.default_rng(seed)
    if isinstance(caption, Scene):
        return render_scene(caption, size, rng=rng)
    if kind == "image":
        return render_image(caption, size, rng=rng)
    return render_video(caption, frames, size, rng=rng)


def build_set(
    kind: str,
    size: int,
    renders_per_caption: int,
    seed: int,
    *,
    frames: int = 16,
    limit: int | None = None,
    workers: int = 1,
    scenes: float = 0.0,
) -> ShapesSet:
    """Render the train split of `kind` ('image' or 'video'); `limit` caps the sample count.
    ``scenes`` (images): the fraction of samples drawn as a two-shape scene of the caption
    and a ``scene_partner`` (both shapes training combinations)."""
    if scenes and kind != "image":
        raise ValueError("two-shape scenes are images only")
    captions = train_captions(kind)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(captions) * renders_per_caption)
    if limit is not None:
        order = order[:limit]
    jobs: list[tuple[str, Caption | Scene, int, int, int]] = []
    texts = []
    partners: dict[tuple, list[Caption]] = {}  # scene_partner's candidates, scanned once each
    for index in order:
        caption = captions[int(index) % len(captions)]
        render_seed = int(rng.integers(2**63))
        # (no draw without scenes: a seed gives the set it gave before)
        partner = (scene_partner(caption, captions, rng, partners)
                   if scenes and rng.random() < scenes else None)
        if partner is not None:
            scene = Scene(replace(caption, background=None), replace(partner, background=None),
                          caption.background)
            jobs.append((kind, scene, size, frames, render_seed))
            texts.append(scene_variants(scene, rng, CAPTION_VARIANTS))
            continue
        jobs.append((kind, caption, size, frames, render_seed))
        texts.append(caption_variants(caption, rng, CAPTION_VARIANTS))
    if not jobs:
        shape = (size, size, 3) if kind == "image" else (frames, size, size, 3)
        return ShapesSet(pixels=np.zeros((0, *shape), np.uint8), texts=[])
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pixels = pool.map(_render, jobs, chunksize=64)
    else:
        pixels = [_render(job) for job in jobs]
    logger.info("rendered %d %s samples at %dpx", len(jobs), kind, size)
    return ShapesSet(pixels=np.stack(pixels), texts=texts)


@dataclass
class TokenTable:
    """Token ids and masks of every caption variant: (N, CAPTION_VARIANTS, L) int64."""

    ids: torch.Tensor
    mask: torch.Tensor
    uncond_ids: torch.Tensor  # (L,) the empty prompt "", as the pipelines tokenize it
    uncond_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenTable:
        return TokenTable(
            *(t.to(device) for t in (self.ids, self.mask, self.uncond_ids, self.uncond_mask))
        )


def tokenize_table(
    tokenizer, texts: list[list[str]], length: int = TRAIN_TOKEN_LENGTH
) -> TokenTable:
    """Tokenize like the pipelines do (lowercase, padding='max_length'), to `length` tokens.

    Shorter padding than the pipelines' 120 changes nothing: the pad positions are masked
    in the T5 encoder and in the PixArt cross-attention, so valid-token outputs match.
    """
    flat = [text.lower().strip() for row in texts for text in row]
    encoded = tokenizer(
        flat, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    )
    if int(encoded.attention_mask[:, -1].sum()) != 0:
        raise ValueError(f"a caption reached the training token length {length}")
    shape = (len(texts), len(texts[0]), length)
    empty = tokenizer([""], padding="max_length", max_length=length, return_tensors="pt")
    return TokenTable(
        ids=encoded.input_ids.view(shape),
        mask=encoded.attention_mask.view(shape),
        uncond_ids=empty.input_ids[0],
        uncond_mask=empty.attention_mask[0],
    )


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1], the VAE's input range."""
    return pixels.movedim(-1, -3).float().div(127.5).sub(1.0)
