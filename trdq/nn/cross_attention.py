"""The denoiser's cross-attention (image tokens over the text tokens) through a kernel that
reads diffusers' key-padding mask as "which keys", not as an additive bias.

``install_cross_attention_kernel(transformer)`` puts ``CrossAttnKernelProcessor`` on every
cross-attention module of a PixArt or Latte denoiser that runs diffusers' plain SDPA
processor. Those two models are the ones whose text mask is known to arrive as diffusers'
key-padding bias ``[B, 1, S_k]``: 0 where a key is kept, -10000 where it is dropped
(``(1 - mask) * -10000``, PixArt's forward; Latte's pipeline passes no mask at all). Other
masks, shapes or arguments go to diffusers' processor, kept as the fallback.

The kernel is FA3 in bf16 with ``seqused_k`` (``trdq.kernels.cross_attention``); where FA3
does not run, nothing is installed (``fa3_status``). Bench row suffix ``+fa3cross`` only:
measured in PixArt-1024's CUDA graphs on an H100, FA3 takes 41 us a call against cuDNN's
masked SDPA at 39 (docs/bench/pixart-alpha-1024-cross-h100.json), so the server keeps SDPA.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from trdq.kernels import fa3_attention as fa3
from trdq.kernels.cross_attention import fa3_cross_attention

logger = logging.getLogger(__name__)

__all__ = [
    "CROSS_ATTENTION_DENOISERS",
    "CrossAttnKernelProcessor",
    "install_cross_attention_kernel",
]

#: ``[B, S, H, D]`` q, k, v and ``keep [B, S_k]`` (or None: every key) -> ``[B, S, H, D]``
MaskedKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
                        torch.Tensor]
#: denoiser classes whose cross-attention mask is diffusers' 0 / -10000 key-padding bias
CROSS_ATTENTION_DENOISERS = ("PixArtTransformer2DModel", "LatteTransformer3DModel")
_PLAIN_PROCESSORS = ("AttnProcessor2_0", "FusedAttnProcessor2_0")


def _key_padding_keep(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``keep [B, S_k]`` from diffusers' key-padding bias ``[B, 1, S_k]`` (kept: exactly 0)."""
    return None if mask is None else mask[:, 0, :] == 0


def _is_key_padding_bias(mask: torch.Tensor | None, batch: int, keys: int) -> bool:
    return mask is None or (mask.ndim == 3 and tuple(mask.shape) == (batch, 1, keys)
                            and mask.is_floating_point())


class CrossAttnKernelProcessor:
    """diffusers attention processor: cross-attention through ``kernel`` with the
    key-padding mask as a set of kept keys; anything else through ``fallback``."""

    def __init__(self, fallback, kernel: MaskedKernel = fa3_cross_attention):
        self.fallback, self.kernel = fallback, kernel

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
        *args, **kwargs,
    ):
        if (encoder_hidden_states is None or hidden_states.ndim != 3 or args or kwargs
                or not _is_key_padding_bias(attention_mask, hidden_states.shape[0],
                                            encoder_hidden_states.shape[1])):
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        batch, tokens, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        if getattr(attn, "fused_projections", False) and getattr(attn, "to_kv", None) is not None:
            key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = query.shape[-1] // attn.heads
        keys = key.shape[1]
        keep = _key_padding_keep(attention_mask)
        out = self.kernel(query.view(batch, tokens, attn.heads, head_dim),
                          key.view(batch, keys, attn.heads, head_dim),
                          value.view(batch, keys, attn.heads, head_dim), keep)
        out = out.reshape(batch, tokens, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _eligible(attn) -> bool:
    if not getattr(attn, "is_cross_attention", False):
        return False
    if type(attn.processor).__name__ not in _PLAIN_PROCESSORS:
        return False
    if any(getattr(attn, part, None) for part in ("spatial_norm", "group_norm", "norm_q",
                                                  "norm_k", "norm_cross")):
        return False
    return not (getattr(attn, "residual_connection", False)
                or getattr(attn, "rescale_output_factor", 1.0) != 1.0)


def install_cross_attention_kernel(
    transformer: torch.nn.Module, kernel: MaskedKernel | None = None
) -> int:
    """``CrossAttnKernelProcessor`` on each eligible cross-attention module of a PixArt or
    Latte ``transformer``; the number of modules. ``kernel`` None: FA3, where it runs (else
    0 modules and a log line saying why)."""
    if type(transformer).__name__ not in CROSS_ATTENTION_DENOISERS:
        return 0
    if kernel is None:
        runs, why = fa3.fa3_status(next(transformer.parameters()).device)
        if not runs:
            logger.info("cross-attention stays on SDPA: %s", why)
            return 0
        kernel = fa3_cross_attention
    count = 0
    for module in transformer.modules():
        attn: Any = module  # diffusers' Attention, duck-typed
        if hasattr(attn, "set_processor") and _eligible(attn):
            attn.set_processor(CrossAttnKernelProcessor(attn.processor, kernel))
            count += 1
    return count
