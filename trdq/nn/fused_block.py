"""Fused LayerNorm entries for PixArt/Latte blocks: ``fuse_block_norms``.

diffusers' ``BasicTransformerBlock`` with ``norm_type="ada_norm_single"`` (PixArt-alpha,
Latte) computes, before its feed-forward,

    h = h + attn2(h)                           (or h + gate_msa * attn1(...) without attn2)
    x = LayerNorm(h) * (1 + scale_mlp) + shift_mlp
    ff(x)                                      (ff.net[0].proj quantizes x first)

With ``fp8-norot`` the quantizer of ``ff.net[0].proj`` is one static e4m3 scale per row,
so all of it is one pass over the rows: ``trdq.kernels.triton_norm_quant`` writes the new
residual and the codes, and the projection runs its GEMM on them
(``QuantLinear.forward_quantized``). Inductor's kernel for the same fusion reads each row
twice and is bound by its arithmetic (the measurements are in that module's docstring).

The self-attention's entry, ``LayerNorm(h) * (1 + scale_msa) + shift_msa`` quantized for
``attn1.to_qkv``, is the same kernel without a residual, where ``attn1`` has one fused,
quantized ``to_qkv`` (``TRDQ_FUSE_QKV``, every bench row) and attends through diffusers'
SDPA processor or ours (``trdq.nn.attention.attend_projected``); otherwise diffusers' path.

With ``gelu=True`` the feed-forward's middle is one kernel too: ``ff.net[0].proj``'s GEMM
writes bf16, ``trdq.kernels.triton_gelu_quant`` applies GELU and ``ff.net[2]``'s quantizer,
and that GEMM runs on the codes.

``fuse_block_norms`` gives each eligible block this forward (the instance's ``forward``;
module names, parameters and state dicts are unchanged) and returns how many it changed.
Eligible: ``ada_norm_single``, no positional embedding inside the block, no GLIGEN fuser,
no chunked feed-forward, ``ff.net[0]`` a diffusers ``GELU`` whose ``proj`` is a
``QuantLinear`` with a producer-computable scale (``producer_row_scale``). Everything else
of the block runs as diffusers writes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trdq.kernels.triton_norm_quant import add_norm_modulate_quant
from trdq.nn.attention import attend_projected, projected_attention_kernel
from trdq.nn.fused_mlp import consumes_row_scales, feed_forward_fusable, feed_forward_on_codes
from trdq.nn.instance_forward import restore_forwards, set_forward
from trdq.nn.quant_linear import QuantLinear

__all__ = ["fuse_block_norms", "fused_block_forward", "unfuse_block_norms"]

#: instance attribute that marks a fused block (its forward is ``fused_block_forward``)
_FUSED = "_trdq_fused_norm"
#: instance attribute: the fused block also runs GELU + quantizer as one kernel
_FUSED_GELU = "_trdq_fused_gelu"


def _eligible(block: nn.Module) -> bool:
    from diffusers.models.activations import GELU
    from diffusers.models.attention import BasicTransformerBlock

    if not isinstance(block, BasicTransformerBlock) or block.norm_type != "ada_norm_single":
        return False
    if block.pos_embed is not None or getattr(block, "fuser", None) is not None:
        return False
    if block._chunk_size is not None or block.only_cross_attention:
        return False
    if getattr(block.norm2, "elementwise_affine", True):
        return False
    first = block.ff.net[0]
    return isinstance(first, GELU) and consumes_row_scales(first.proj)


def fused_block_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    timestep: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    class_labels: torch.Tensor | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``BasicTransformerBlock.forward`` for ``ada_norm_single`` with the LayerNorm entries
    of the self-attention and the feed-forward (and optionally its GELU) fused with the
    quantizers after them (module docstring). Inputs other than ``[batch, tokens, dim]``
    take diffusers' own forward."""
    if hidden_states.dim() != 3:
        return type(self).forward(self, hidden_states, attention_mask, encoder_hidden_states,
                                  encoder_attention_mask, timestep, cross_attention_kwargs,
                                  class_labels, added_cond_kwargs)
    # diffusers' ada_norm_single blocks are always called with the timestep embedding
    assert timestep is not None, "an ada_norm_single block needs its timestep"
    batch = hidden_states.shape[0]
    kwargs = dict(cross_attention_kwargs or {})
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        self.scale_shift_table[None] + timestep.reshape(batch, 6, -1)
    ).chunk(6, dim=1)

    attn_output = _self_attention(self, hidden_states, shift_msa, scale_msa, attention_mask, kwargs)
    if self.attn2 is not None:
        hidden_states = gate_msa * attn_output + hidden_states
        # PixArt's cross-attention reads the residual stream itself (no norm2 before it)
        branch, gate = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                  attention_mask=encoder_attention_mask, **kwargs), None
    else:
        branch, gate = attn_output, gate_msa

    proj = self.ff.net[0].proj
    rows = hidden_states.shape[0] * hidden_states.shape[1]
    row_scale = proj.producer_row_scale(rows)
    hidden_states, codes = add_norm_modulate_quant(
        hidden_states, branch, gate, shift_mlp, scale_mlp, 1.0 / row_scale, self.norm2.eps
    )
    ff_output = _feed_forward(self, codes, row_scale, tuple(hidden_states.shape[:-1]),
                              hidden_states.dtype)
    return gate_mlp * ff_output + hidden_states


def _feed_forward(block, codes, row_scale, lead, dtype) -> torch.Tensor:
    """``block.ff`` on its input's codes: ``ff.net[0].proj``'s GEMM, then GELU and the rest
    of ``ff.net`` as diffusers runs them, or, where ``fuse_block_norms(gelu=True)`` found
    it possible, GELU and ``ff.net[2]``'s quantizer as one kernel between the two GEMMs
    (the GELU applied there whether or not it was moved into ``proj``)."""
    if not (getattr(block, _FUSED_GELU, False) and not block.training):
        proj = block.ff.net[0].proj
        out = block.ff.net[0].gelu(proj.forward_quantized(codes, row_scale, lead, dtype))
        for module in block.ff.net[1:]:
            out = module(out)
        return out
    return feed_forward_on_codes(block.ff, codes, row_scale, lead, dtype)


def _gelu_fusable(block: Any) -> bool:
    """Whether the feed-forward is tanh GELU -> dropout -> a quantized linear with a
    producer-computable scale (``ff.net[2]``), so ``gelu_quant`` can feed that linear:
    ``fused_mlp.feed_forward_fusable`` (the dropouts are identities in eval mode, which the
    forward checks)."""
    return feed_forward_fusable(block.ff)


def _self_attention(block, hidden_states, shift, scale, attention_mask, kwargs) -> torch.Tensor:
    """``attn1(LayerNorm(h) * (1 + scale) + shift)``. Where ``attn1`` projects with one
    quantized ``to_qkv`` and attends through a known kernel, the LayerNorm, modulate and
    quantizer run as one kernel (without a residual) and the projection on its codes;
    otherwise as diffusers writes it."""
    attn = block.attn1
    qkv_layer = getattr(attn, "to_qkv", None)
    kernel = None
    if (attention_mask is None and not kwargs and isinstance(qkv_layer, QuantLinear)
            and getattr(attn, "fused_projections", False)):
        kernel = projected_attention_kernel(attn)
    rows = hidden_states.shape[0] * hidden_states.shape[1]
    # a kernel is found only for a QuantLinear ``to_qkv``, and row_scale only with a kernel;
    # the isinstance / None tests restate that for the type checker
    row_scale = (qkv_layer.producer_row_scale(rows)
                 if kernel is not None and isinstance(qkv_layer, QuantLinear) else None)
    if row_scale is None or kernel is None or not isinstance(qkv_layer, QuantLinear):
        normed = block.norm1(hidden_states) * (1 + scale) + shift
        return attn(normed, encoder_hidden_states=None, attention_mask=attention_mask, **kwargs)
    _, codes = add_norm_modulate_quant(hidden_states, None, None, shift, scale, 1.0 / row_scale,
                                       block.norm1.eps)
    qkv = qkv_layer.forward_quantized(codes, row_scale, tuple(hidden_states.shape[:-1]),
                                      hidden_states.dtype)
    query, key, value = qkv.chunk(3, dim=-1)
    return attend_projected(attn, query, key, value, kernel)


def fuse_block_norms(denoiser: nn.Module, gelu: bool = False) -> int:
    """Give every eligible block of ``denoiser`` ``fused_block_forward``; returns how many
    (0 when the layers are not quantized the way the fused kernel needs: nothing changes).
    ``gelu``: also run the feed-forward's GELU and its second linear's quantizer as one
    kernel (``trdq.kernels.triton_gelu_quant``) where that linear allows it."""
    count = 0
    for module in denoiser.modules():
        if getattr(module, _FUSED, False) or not _eligible(module):
            continue
        set_forward(module, fused_block_forward, _FUSED)
        setattr(module, _FUSED_GELU, gelu and _gelu_fusable(module))
        count += 1
    return count


def unfuse_block_norms(denoiser: nn.Module) -> int:
    """Undo ``fuse_block_norms`` (diffusers' forward again); returns how many blocks."""
    return restore_forwards(denoiser, _FUSED, _FUSED_GELU)
