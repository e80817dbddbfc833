"""Cross-attention over a padded text sequence through FlashAttention-3 (bf16).

Why it was tried: PixArt's cross-attention (8192 query rows over 120 T5 tokens, head dim
72) runs through SDPA with diffusers' additive key-padding bias, a cuDNN kernel at about a
third of the memory bandwidth (39 us a call, 1.1 ms a PixArt-1024 step on an H100). FA3 takes
no bias, but it takes ``seqused_k``: how many leading keys each sample uses. Measured, it is
no faster (41 us a call in the same graphs): an opt-in bench row (``+fa3cross``) only.

A key-padding mask is not always a prefix, so the kept keys are moved to the front first.
Attention is a sum over keys, so any reordering of the keys (with the values alongside)
leaves it unchanged; ``kept_keys_first`` uses a stable sort of the "dropped" flags, which
keeps the kept keys in order (the same float summation order as a prefix mask would give).
A dropped key's bias in diffusers is -10000, whose ``exp`` is 0 in float32: dropping the key
is the same attention to rounding.

Layout ``[B, S, H, D]`` like ``trdq.kernels.fa3_attention``; ``keep [B, S_k]`` bool.
``prefix_attention_reference`` is the oracle (what FA3 computes with ``seqused_k``), in torch
on any device. Importing this module never needs the wheel or a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trdq.kernels.fa3_attention import _fa3_forward

__all__ = [
    "fa3_cross_attention",
    "kept_keys_first",
    "prefix_attention_reference",
]


def kept_keys_first(
    k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k``, ``v`` with each sample's kept keys moved to the front (in their order) and the
    count of kept keys per sample (int32 ``[B]``, FA3's ``seqused_k``)."""
    dropped = (~keep).to(torch.int32)
    order = torch.argsort(dropped, dim=1, stable=True)
    index = order[:, :, None, None].expand(-1, -1, k.shape[2], k.shape[3])
    used = keep.sum(dim=1, dtype=torch.int32)
    return torch.gather(k, 1, index), torch.gather(v, 1, index), used


def fa3_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """FA3 (bf16) attention of ``q`` over the keys ``keep`` marks (all of them when None)."""
    if keep is None:
        return _fa3_forward()(q, k, v, softmax_scale=q.shape[-1] ** -0.5)[0]
    k, v, used = kept_keys_first(k, v, keep)
    return _fa3_forward()(q, k, v, seqused_k=used, softmax_scale=q.shape[-1] ** -0.5)[0]


def prefix_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """What ``fa3_cross_attention`` computes, in torch: each sample attends over its first
    ``used`` keys after ``kept_keys_first`` (float32 softmax through SDPA, one sample at a
    time). The kernel's oracle, and the CPU stand-in of the kernel in the processor tests."""
    if keep is None:
        keep = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
    k, v, used = kept_keys_first(k, v, keep)
    outs = []
    for b, count in enumerate(used.tolist()):
        qb, kb, vb = (t[b : b + 1].transpose(1, 2).float() for t in (q, k[:, :count], v[:, :count]))
        outs.append(F.scaled_dot_product_attention(qb, kb, vb).transpose(1, 2))
    return torch.cat(outs).to(q.dtype)
