"""FLUX's self-attention with its prologue fused into one kernel: ``fuse_flux_attention``.

With static FP8 attention (``trdq.nn.static_attention``) diffusers' ``FluxAttnProcessor``
still runs, between the fused Q/K/V projection and FA3, the q/k RMSNorms, the rotary
embedding, the concatenation of the text and image streams and the e4m3 casts; under
torch.compile those were reduction kernels at ~0.8 TB/s, ~8 ms of a 92 ms FLUX.1-dev-1024
step on an H100 (``trdq.kernels.triton_rope_quant`` has the measurements). Here
``FluxPrologueProcessor`` gives the projections' outputs to ``norm_rope_e4m3`` (one launch:
FA3's three e4m3 operands), attends on the codes with the module's calibrated statistics
and finishes as diffusers does (split, ``to_out``, ``to_add_out``).

Eligible: ``FluxAttention`` with fused projections (``to_qkv``, and ``to_added_qkv`` in the
double-stream blocks), ``torch.nn.RMSNorm`` q/k norms with weights, a head dim the kernel
takes, and a static FP8 kernel installed (``trdq.api.calibrate_attention``). Calls with an
attention mask, without rotary tables or too short for FP8 attention keep the processor
that was there (the static kernel through diffusers' code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trdq.kernels import fa3_attention as fa3
from trdq.kernels.triton_rope_quant import norm_rope_e4m3, supported_head_dim
from trdq.nn import static_attention
from trdq.nn.attention import installed_kernel

__all__ = ["FluxPrologueProcessor", "fuse_flux_attention", "unfuse_flux_attention"]

#: attends on FA3's e4m3 operands: (codes, scales, v_mean, head_dim, dtype) -> [B, S, H, D]
CodesAttention = Callable[..., torch.Tensor]


def _norm_weight(norm: Any) -> torch.Tensor | None:
    return norm.weight if isinstance(norm, torch.nn.RMSNorm) else None


def _eligible(attn: Any) -> bool:
    """``attn``: any module (diffusers' attention classes read as dynamically as in the
    processor)."""
    if type(attn).__name__ != "FluxAttention" or not getattr(attn, "fused_projections", False):
        return False
    norms = [attn.norm_q, attn.norm_k]
    if attn.added_kv_proj_dim is not None:
        if not hasattr(attn, "to_added_qkv"):
            return False
        norms += [attn.norm_added_q, attn.norm_added_k]
    return (all(_norm_weight(n) is not None for n in norms)
            and supported_head_dim(attn.head_dim)
            and isinstance(installed_kernel(attn), static_attention.StaticFp8Attention))


class FluxPrologueProcessor:
    """``FluxAttnProcessor``'s computation with the prologue as one kernel (module
    docstring). ``fallback``: the processor it replaced; ``attend``: FA3 on the codes, or
    its float32 oracle where the static kernel runs an oracle (the CPU)."""

    def __init__(self, kernel: static_attention.StaticFp8Attention, fallback: Any,
                 attend: CodesAttention):
        self.kernel, self.fallback, self.attend = kernel, fallback, attend

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        tokens = text + hidden_states.shape[1]
        if (attention_mask is not None or not isinstance(image_rotary_emb, tuple)
                or tokens < static_attention.STATIC_MIN_TOKENS):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 image_rotary_emb)
        image_qkv = attn.to_qkv(hidden_states)
        if encoder_hidden_states is not None:
            text_qkv = attn.to_added_qkv(encoder_hidden_states)
            norms = (attn.norm_added_q, attn.norm_added_k, attn.norm_q, attn.norm_k)
        else:
            text_qkv = image_qkv[:, :0]
            norms = (attn.norm_q, attn.norm_k, attn.norm_q, attn.norm_k)
        weights = torch.stack([n.weight for n in norms])
        eps = attn.norm_q.eps if attn.norm_q.eps is not None else torch.finfo(image_qkv.dtype).eps
        stats = self.kernel.stats(hidden_states.shape[0])
        scales, means = fa3.stacked_scales_and_means(stats)
        cos, sin = image_rotary_emb
        codes = norm_rope_e4m3(text_qkv, image_qkv, weights, cos, sin, scales, means,
                               attn.heads, eps)
        out = self.attend(codes, scales, stats.v_mean, attn.head_dim,
                          hidden_states.dtype).flatten(2, 3)
        if encoder_hidden_states is None:
            return out
        encoder_out, out = out[:, :text], out[:, text:]
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        return out, attn.to_add_out(encoder_out.contiguous())


def fuse_flux_attention(transformer: torch.nn.Module) -> int:
    """Give every eligible FLUX attention module ``FluxPrologueProcessor``; returns how
    many (0 for other families, or without static FP8 attention installed)."""
    count = 0
    for module in transformer.modules():
        if isinstance(getattr(module, "processor", None), FluxPrologueProcessor):
            continue
        if not _eligible(module):
            continue
        kernel = installed_kernel(module)
        assert isinstance(kernel, static_attention.StaticFp8Attention)  # _eligible checked
        attend = (fa3.fa3_fp8_attention_on_codes if kernel.kernel is None
                  else fa3.fp8_attention_on_codes_reference)
        # an attribute torch types as Tensor | Module; diffusers stores any processor there
        module.processor = FluxPrologueProcessor(kernel, module.processor, attend)  # type: ignore[assignment]
        count += 1
    return count


def unfuse_flux_attention(transformer: torch.nn.Module) -> int:
    """Undo ``fuse_flux_attention`` (the processors it replaced); returns how many."""
    count = 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, FluxPrologueProcessor):
            module.processor = processor.fallback
            count += 1
    return count
