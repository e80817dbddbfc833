"""FLUX's double-stream feed-forward entries as one kernel each: ``fuse_flux_blocks``.

In diffusers' ``FluxTransformerBlock`` each stream (image and text), after the joint
attention, computes

    h = h + gate_msa * attention_output
    x = LayerNorm(h) * (1 + scale_mlp) + shift_mlp      (no affine LayerNorm)
    h = h + gate_mlp * ff(x)                            (ff.net[0].proj quantizes x first)

With ``fp8-norot`` that quantizer is one static e4m3 scale per row, so the residual add,
LayerNorm, modulate and quantizer are one pass over the rows
(``trdq.kernels.triton_norm_quant``, as in PixArt's blocks: ``trdq.nn.fused_block``) and
the feed-forward runs on its codes, with GELU and ``net[2]``'s quantizer as one kernel
between its GEMMs (``fused_mlp.feed_forward_on_codes``). Inductor's kernels for this entry
are, by their names, the two 19-launch LayerNorm reductions of the 86.4 ms FLUX.1-dev-1024
step on an H100 (0.73 + 0.20 ms, ``docs/bench/flux-dev-1024-fusions-h100.json``): a small
gain; the hand-written kernel ran twice Inductor's speed at Latte's shape.

``fuse_flux_blocks`` gives each eligible block this forward (the instance's ``forward``;
names, parameters and state dicts unchanged). Eligible: ``FluxTransformerBlock`` whose
``norm2`` / ``norm2_context`` are LayerNorms without weights and whose ``ff`` /
``ff_context`` are fusable feed-forwards (``fused_mlp.feed_forward_fusable``) with a
producer-computable scale on ``net[0].proj``. The attention and its ``norm1`` entries run
as before (FLUX's attention prologue has its own kernel: ``trdq.nn.flux_attention``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trdq.kernels.triton_norm_quant import add_norm_modulate_quant
from trdq.nn.fused_mlp import consumes_row_scales, feed_forward_fusable, feed_forward_on_codes
from trdq.nn.instance_forward import restore_forwards, set_forward

__all__ = ["fuse_flux_blocks", "fused_flux_block_forward", "unfuse_flux_blocks"]

#: instance attribute that marks a fused block (its forward is ``fused_flux_block_forward``)
_FUSED = "_trdq_fused_flux_block"


def _entry_fusable(norm: Any, ff: Any) -> bool:
    """A LayerNorm without weights before a fusable feed-forward whose first linear can
    take codes written by the kernel before it (``ff``: any attribute of a block, read as
    dynamically as diffusers' own code)."""
    if not isinstance(norm, nn.LayerNorm) or norm.elementwise_affine:
        return False
    return feed_forward_fusable(ff) and consumes_row_scales(ff.net[0].proj)


def _eligible(block: Any) -> bool:
    return (type(block).__name__ == "FluxTransformerBlock"
            and _entry_fusable(block.norm2, block.ff)
            and _entry_fusable(block.norm2_context, block.ff_context))


def fused_flux_block_forward(
    self,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    joint_attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``FluxTransformerBlock.forward`` with each stream's feed-forward entry fused (module
    docstring); in training mode (dropouts live) diffusers' forward."""
    if self.training:
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb,
                                  image_rotary_emb, joint_attention_kwargs)
    norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
    norm_context, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
        encoder_hidden_states, emb=temb
    )
    outputs = self.attn(hidden_states=norm_hidden, encoder_hidden_states=norm_context,
                        image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
    attn_output, context_attn_output = outputs[0], outputs[1]
    hidden_states = _gated_feed_forward(self.norm2, self.ff, hidden_states, attn_output,
                                        gate_msa, shift_mlp, scale_mlp, gate_mlp)
    if len(outputs) == 3:  # an IP-adapter's attention output, added after the feed-forward
        hidden_states = hidden_states + outputs[2]
    encoder_hidden_states = _gated_feed_forward(
        self.norm2_context, self.ff_context, encoder_hidden_states, context_attn_output,
        c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp,
    )
    if encoder_hidden_states.dtype == torch.float16:
        encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
    return encoder_hidden_states, hidden_states


def _gated_feed_forward(norm, ff, residual, branch, gate, shift, scale, gate_out) -> torch.Tensor:
    """``h = residual + gate * branch``, then ``h + gate_out * ff(LayerNorm(h) * (1 + scale)
    + shift)``, the entry as one kernel writing ``h`` and ``ff``'s input codes."""
    rows = residual.shape[0] * residual.shape[1]
    row_scale = ff.net[0].proj.producer_row_scale(rows)
    residual, codes = add_norm_modulate_quant(residual, branch, gate, shift, scale,
                                              1.0 / row_scale, norm.eps)
    out = feed_forward_on_codes(ff, codes, row_scale, tuple(residual.shape[:-1]),
                                residual.dtype)
    return residual + gate_out.unsqueeze(1) * out


def fuse_flux_blocks(denoiser: nn.Module) -> int:
    """Give every eligible FLUX double-stream block of ``denoiser``
    ``fused_flux_block_forward``; returns how many (0 where the layers are not quantized
    the way the kernels need: nothing changes)."""
    count = 0
    for module in denoiser.modules():
        if not getattr(module, _FUSED, False) and _eligible(module):
            set_forward(module, fused_flux_block_forward, _FUSED)
            count += 1
    return count


def unfuse_flux_blocks(denoiser: nn.Module) -> int:
    """Undo ``fuse_flux_blocks`` (diffusers' forward again); returns how many blocks."""
    return restore_forwards(denoiser, _FUSED)
