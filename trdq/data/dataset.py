"""Torch datasets of rendered shapes for training the zoo: (caption text, pixels in [-1, 1]).

Item `i` is a pure function of (seed, i): it renders training combination
`i % len(combinations)` with a generator seeded by (seed, i) (layout jitter, caption
dropout), so any worker, epoch or machine sees the same sample for the same index.
Only training combinations are rendered; held-out ones (`trdq.data.split`) never are.

Caption dropout (`drop_caption`): with probability `uncond_prob` the text is "" (the
unconditional prompt that classifier-free guidance contrasts against); otherwise with
probability `partial_prob` a random subset of the optional attributes is left out of
the text, so partial prompts ("a red circle") learn the marginal over what they omit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from trdq.data.grammar import Caption
from trdq.data.render import render_image, render_video
from trdq.data.split import train_captions

#: Attributes that caption dropout may leave out (the shape is always named).
_DROPPABLE = ("color", "size", "position", "background", "speed")


def drop_caption(
    caption: Caption,
    rng: np.random.Generator,
    *,
    uncond_prob: float = 0.1,
    partial_prob: float = 0.2,
) -> str:
    """Text for `caption` after caption dropout: "", a partial caption, or the full one.

    A partial caption drops each droppable attribute it names with probability 1/2 (at
    least one is dropped); the direction is kept, because it decides image vs video.
    """
    if not 0.0 <= uncond_prob + partial_prob <= 1.0:
        raise ValueError("uncond_prob + partial_prob must lie in [0, 1]")
    draw = rng.random()
    if draw < uncond_prob:
        return ""
    if draw >= uncond_prob + partial_prob:
        return caption.text
    named = [n for n in _DROPPABLE if getattr(caption, n) is not None]
    if not named:
        return caption.text
    dropped = [n for n in named if rng.random() < 0.5] or [named[int(rng.integers(len(named)))]]
    return caption.replace(**dict.fromkeys(dropped)).text


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(127.5).sub_(1.0)
    return tensor.movedim(-1, -3)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3) (inverse of `to_tensor`)."""
    values = ((tensor.detach().float().cpu() + 1.0) * 127.5).round().clamp_(0, 255)
    return values.movedim(-3, -1).to(torch.uint8).numpy()


class ShapesDataset(Dataset):
    """Rendered training combinations of one kind.

    Items are `(text, pixels)`: images are (3, size, size), videos (num_frames, 3, size,
    size), float32 in [-1, 1]. `length` defaults to one pass over the combinations; a
    larger length repeats them with fresh jitter and dropout.
    """

    def __init__(
        self,
        kind: Literal["image", "video"] = "image",
        *,
        size: int | None = None,
        num_frames: int = 16,
        length: int | None = None,
        seed: int = 0,
        uncond_prob: float = 0.1,
        partial_prob: float = 0.2,
        jitter: bool = True,
    ) -> None:
        if kind not in ("image", "video"):
            raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
        self.kind = kind
        self.captions = train_captions(kind)
        self.size = size if size is not None else (128 if kind == "image" else 64)
        self.num_frames = num_frames
        self.length = len(self.captions) if length is None else length
        self.seed = seed
        self.uncond_prob = uncond_prob
        self.partial_prob = partial_prob
        self.jitter = jitter
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {self.length}")

    def __len__(self) -> int:
        return self.length

    def caption(self, index: int) -> Caption:
        """The full training combination item `index` renders."""
        return self.captions[index % len(self.captions)]

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        caption = self.caption(index)
        layout_rng = rng if self.jitter else None
        if self.kind == "image":
            pixels = render_image(caption, self.size, rng=layout_rng)
        else:
            pixels = render_video(caption, self.num_frames, self.size, rng=layout_rng)
        text = drop_caption(
            caption, rng, uncond_prob=self.uncond_prob, partial_prob=self.partial_prob
        )
        return text, to_tensor(pixels)
