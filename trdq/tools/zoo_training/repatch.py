"""Warm-start a DiT at a finer patch size from weights trained at a coarser one.

Only two tensors of a PixArt / Latte DiT depend on the patch size P: the patch embedding
``pos_embed.proj`` (a conv with kernel and stride P, weight (D, C, P, P)) and the output
projection ``proj_out`` (Linear D -> P*P*C, rows ordered (p, q, c) as diffusers unpatchifies
them). The transformer blocks see D-wide tokens whatever P is, so they carry over as they
are. Going from P to p = P / r:

- each new p x p kernel is the sum of the old kernel's r x r blocks at the same place, so
  a smooth latent gives the token it gave before (a patch of constant value v embeds to
  the same sum(w) * v);
- each new output row (i, j, c) is the mean of the old rows of the r x r sub-positions it
  covers, so the new model starts by predicting the old prediction's local average.

The sin-cos position embedding is a non-persistent buffer (rebuilt from the config), so
nothing is saved for it; the t2i config keeps the old token coordinates with
``interpolation_scale`` (see `trdq.zoo.architectures`).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

PATCH_WEIGHT = "pos_embed.proj.weight"


def saved_patch_size(state: dict[str, torch.Tensor]) -> int:
    """The patch size a DiT state dict was trained with (its patch-embedding kernel)."""
    return int(state[PATCH_WEIGHT].shape[-1])


def repatch_state(state: dict[str, torch.Tensor], patch_size: int) -> dict[str, torch.Tensor]:
    """`state` converted to `patch_size` (a divisor of its own); unchanged when equal."""
    old = saved_patch_size(state)
    if old == patch_size:
        return state
    if old % patch_size:
        raise ValueError(f"cannot repatch from {old} to {patch_size}: not a divisor")
    ratio = old // patch_size
    converted = dict(state)
    kernel = state[PATCH_WEIGHT]  # (D, C, P, P) -> (D, C, p, r, p, r), summed over the r's
    dim, channels = kernel.shape[:2]
    converted[PATCH_WEIGHT] = (
        kernel.float()
        .reshape(dim, channels, patch_size, ratio, patch_size, ratio)
        .sum(dim=(3, 5))
        .to(kernel.dtype)
    )
    weight, bias = state["proj_out.weight"], state["proj_out.bias"]
    out_channels = weight.shape[0] // (old * old)
    # rows (P, P, C) -> (p, r, p, r, C), averaged over the r's -> rows (p, p, C)
    rows = weight.float().reshape(patch_size, ratio, patch_size, ratio, out_channels, -1)
    converted["proj_out.weight"] = rows.mean(dim=(1, 3)).reshape(-1, dim).to(weight.dtype)
    biases = bias.float().reshape(patch_size, ratio, patch_size, ratio, out_channels)
    converted["proj_out.bias"] = biases.mean(dim=(1, 3)).reshape(-1).to(bias.dtype)
    logger.info("repatched a DiT state dict from patch %d to %d", old, patch_size)
    return converted
