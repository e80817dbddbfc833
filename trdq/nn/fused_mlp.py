"""GELU and the next linear's quantizer as one kernel in the DiT families' MLPs: ``fuse_mlps``.

With ``fp8-norot`` a quantized linear's input quantizer is one static e4m3 scale per row,
so the kernel that applies the GELU before it can write its codes directly
(``trdq.kernels.triton_gelu_quant``) and the linear runs its GEMM on them
(``QuantLinear.forward_quantized``). Under torch.compile Inductor fuses the same GELU and
quantizer into one kernel too, but at FLUX.1-dev-1024's shapes its kernels ran at about
half the memory bandwidth (H100: 172 us a single-stream block for the ``proj_out`` input,
96 us a double-stream feed-forward; ``docs/bench/flux-dev-1024-static-h100.json``).

Two shapes, each module's ``forward`` replaced on the instance (module names, parameters
and state dicts unchanged):

- diffusers' ``FeedForward`` with ``GELU(approximate="tanh")`` (FLUX's and SD3's
  double-stream blocks, Wan's blocks): ``net[0].proj``'s GEMM writes bf16 without its
  GELU, ``gelu_quant`` writes ``net[2]``'s codes.
- FLUX's ``FluxSingleTransformerBlock``: ``proj_out`` reads ``cat([attention output,
  GELU(proj_mlp(x))])``; ``cat_gelu_quant`` writes that concatenation as codes without
  materialising it in bf16.

PixArt/Latte blocks fuse more than this (``trdq.nn.fused_block``, which calls their
feed-forward's layers itself). Eligible: the layers above are ``QuantLinear`` and the
consuming one has a producer-computable scale (``producer_row_scale``); everything else
keeps diffusers' forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trdq.kernels.triton_gelu_quant import cat_gelu_quant, gelu_quant
from trdq.nn.instance_forward import restore_forwards, set_forward
from trdq.nn.quant_linear import QuantLinear

__all__ = [
    "consumes_row_scales", "feed_forward_fusable", "feed_forward_on_codes", "fuse_mlps",
    "unfuse_mlps",
]

#: instance attribute that marks a module whose forward this module replaced
_FUSED = "_trdq_fused_mlp"


def consumes_row_scales(layer: Any) -> bool:
    """Whether ``layer`` is a ``QuantLinear`` whose input a producer can quantize."""
    return isinstance(layer, QuantLinear) and layer.producer_row_scale(2) is not None


def feed_forward_fusable(module: nn.Module) -> bool:
    """diffusers' ``FeedForward``: tanh ``GELU`` with a quantized ``proj`` (its GELU in
    the layer after ``fuse_gelu_into_linears`` or in the module), dropouts, and a
    quantized ``net[2]`` with a producer-computable scale."""
    from diffusers.models.activations import GELU
    from diffusers.models.attention import FeedForward

    if not isinstance(module, FeedForward) or len(module.net) < 3:
        return False
    first = module.net[0]
    if not (isinstance(first, GELU) and first.approximate == "tanh"
            and isinstance(first.proj, QuantLinear)
            and first.proj.output_activation in ("", "gelu_tanh")):
        return False
    if not all(isinstance(m, nn.Dropout) for i, m in enumerate(module.net) if i not in (0, 2)):
        return False
    return consumes_row_scales(module.net[2])


def fused_feed_forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``FeedForward.forward`` with GELU and ``net[2]``'s quantizer as one kernel (module
    docstring); in training mode (dropouts live) diffusers' forward."""
    if self.training:
        return type(self).forward(self, hidden_states, *args, **kwargs)
    proj, out_layer = self.net[0].proj, self.net[2]
    lead = tuple(hidden_states.shape[:-1])
    # the GELU is applied by gelu_quant, whether fuse_gelu_into_linears moved it into proj
    hidden = proj(hidden_states, activation=False).reshape(-1, proj.out_features)
    rows = hidden.shape[0]
    row_scale = out_layer.producer_row_scale(rows)
    return out_layer.forward_quantized(gelu_quant(hidden, 1.0 / row_scale), row_scale, lead,
                                       hidden_states.dtype)


def feed_forward_on_codes(ff: Any, codes: torch.Tensor, row_scale: torch.Tensor,
                          lead: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A fusable ``FeedForward`` (``feed_forward_fusable``) from the codes of its input,
    quantized by the kernel before it with ``net[0].proj``'s ``row_scale``: that GEMM
    without its GELU, then ``gelu_quant`` writes ``net[2]``'s codes. ``lead``: the output's
    leading dimensions (``codes`` is ``[rows, features]``; ``ff`` read as dynamically as
    diffusers' own code)."""
    proj, out_layer = ff.net[0].proj, ff.net[2]
    rows = codes.shape[0]
    hidden = proj.forward_quantized(codes, row_scale, (rows,), dtype, activation=False)
    out_scale = out_layer.producer_row_scale(rows)
    return out_layer.forward_quantized(gelu_quant(hidden, 1.0 / out_scale), out_scale, lead,
                                       dtype)


def _single_block_fusable(module: nn.Module) -> bool:
    """FLUX's single-stream block with a tanh ``act_mlp`` between a quantized
    ``proj_mlp`` (no activation of its own) and a quantized ``proj_out`` with a
    producer-computable scale."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    if not isinstance(module, FluxSingleTransformerBlock):
        return False
    act = module.act_mlp
    return (isinstance(act, nn.GELU) and act.approximate == "tanh"
            and isinstance(module.proj_mlp, QuantLinear)
            and not module.proj_mlp.output_activation
            and consumes_row_scales(module.proj_out))


def fused_single_block_forward(
    self,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    joint_attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``FluxSingleTransformerBlock.forward`` with ``proj_out``'s input written as codes
    by ``cat_gelu_quant`` from the attention output and ``proj_mlp``'s (module
    docstring)."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp_hidden_states = self.proj_mlp(norm_hidden_states)
    attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                            **(joint_attention_kwargs or {}))
    lead = tuple(hidden_states.shape[:-1])
    rows = hidden_states.shape[0] * hidden_states.shape[1]
    row_scale = self.proj_out.producer_row_scale(rows)
    codes = cat_gelu_quant(attn_output.reshape(rows, -1), mlp_hidden_states.reshape(rows, -1),
                           1.0 / row_scale)
    out = self.proj_out.forward_quantized(codes, row_scale, lead, hidden_states.dtype)
    hidden_states = residual + gate.unsqueeze(1) * out
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def fuse_mlps(denoiser: nn.Module) -> int:
    """Give every eligible feed-forward and FLUX single-stream block of ``denoiser`` its
    fused forward; returns how many (0 where the layers are not quantized the way the
    kernels need: nothing changes)."""
    count = 0
    for module in denoiser.modules():
        if getattr(module, _FUSED, False):
            continue
        forward: Callable[..., Any]
        if feed_forward_fusable(module):
            forward = fused_feed_forward
        elif _single_block_fusable(module):
            forward = fused_single_block_forward
        else:
            continue
        set_forward(module, forward, _FUSED)
        count += 1
    return count


def unfuse_mlps(denoiser: nn.Module) -> int:
    """Undo ``fuse_mlps`` (diffusers' forward again); returns how many modules."""
    return restore_forwards(denoiser, _FUSED)
