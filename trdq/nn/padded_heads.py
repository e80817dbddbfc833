"""Attention heads padded once, in the weights, to FA3's FP8 head-dim multiple (bench row
suffix ``+padheads``).

Why: FA3's e4m3 kernel needs a head dim that is a multiple of 16, so PixArt's 72-wide heads
are padded to 80 on every call: after the fused Q/K/V projection, Inductor's three casts read
72-wide head slices and write 80-wide ones at ~1.2 TB/s, 2.1 ms of a PixArt-1024 step on an
H100 (docs/journal/2026-12-08-pipeline-measured.md). Padded in the weights instead, the
projection writes 80-wide heads itself and each cast is a plain elementwise map over whole
rows.

The padded module computes the same attention:
- Q, K and V rows: each head's rows, then zero rows (zero weight, zero bias), so the padded
  channels are 0 in Q, K and V: nothing is added to ``Q K^T``, and the output's padded
  channels are 0.
- SDPA and FA3 scale the logits by ``D ** -0.5`` of the head dim they see, so Q's rows are
  multiplied by ``sqrt(D_padded / D)``: ``(c q) . k / sqrt(D_padded) = q . k / sqrt(D)``.
  In a quantized layer the factor goes into those rows' weight scales: the codes are kept,
  nothing is rounded again.
- ``to_out`` gets zero input columns at the padded channels, so it reads the padded heads
  as they come (no slice, no copy).

Cost: the Q/K/V GEMM and ``to_out`` are each ``D_padded / D`` wider (11% at 72 -> 80).
Only self-attention with a fused ``to_qkv`` is padded, and only where ``to_out`` has no
rotation (a Hadamard block over its input would mix the zero columns in): ``fp8-norot``,
W8A8 without rotation, bf16. Run it before the blocks are fused and before static FP8
attention records its statistics (which then have the padded shape).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trdq.kernels.fa3_attention import FP8_HEAD_DIM_MULTIPLE
from trdq.nn.quant_linear import QuantLinear
from trdq.quant_transforms import LayerQuantParams
from trdq.state import STATE_ATTR

__all__ = [
    "pad_attention_heads",
    "padded_channels",
    "padded_head_dim",
]


def padded_head_dim(head_dim: int, multiple: int = FP8_HEAD_DIM_MULTIPLE) -> int:
    """``head_dim`` rounded up to a multiple of ``multiple`` (72 -> 80 for FA3's e4m3)."""
    return -(-head_dim // multiple) * multiple


def padded_channels(parts: int, heads: int, head_dim: int, padded: int) -> torch.Tensor:
    """For each channel of the padded layout (``parts`` x ``heads`` x ``padded``), the
    channel of the unpadded one it takes (-1: a zero channel)."""
    d = torch.arange(padded)
    per_head = torch.where(d < head_dim, d, -1)
    offsets = torch.arange(parts * heads)[:, None] * head_dim
    return torch.where(per_head >= 0, per_head + offsets, -1).flatten()


def _gather(values: torch.Tensor, source: torch.Tensor, dim: int, fill: float = 0.0) -> torch.Tensor:
    """``values`` indexed by ``source`` along ``dim``, ``fill`` where ``source`` is -1 (e4m3
    codes are moved as bytes, a zero byte being e4m3's +0, and filled with it)."""
    raw = values.view(torch.uint8) if values.dtype == torch.float8_e4m3fn else values
    out = raw.index_select(dim, source.clamp_min(0).to(raw.device))
    shape = [1] * out.ndim
    shape[dim] = -1
    keep = (source >= 0).to(out.device).view(shape)
    out = torch.where(keep, out, torch.full_like(out, fill if raw is values else 0))
    return out.view(values.dtype) if raw is not values else out


def _rebuilt(layer: QuantLinear, qweight: torch.Tensor, scale: torch.Tensor,
             bias: torch.Tensor | None, params: LayerQuantParams,
             weight_sum: torch.Tensor | None) -> QuantLinear:
    """A ``QuantLinear`` like ``layer`` (backend, context, bit widths, modes, output
    activation) on new canonical weights."""
    rebuilt = QuantLinear.from_quantized(
        qweight, scale, bias, params, layer.backend, layer.context,
        weight_bits=layer.weight_bits, act_bits=layer.act_bits, fp8=layer.fp8,
        act_mode=layer.act_mode, cfg_wise=layer.cfg_wise, cfg_delta=layer.cfg_delta,
        weight_sum=weight_sum,
    )
    rebuilt.output_activation = layer.output_activation
    return rebuilt


def _pad_rows(layer: nn.Module, source: torch.Tensor, factor: torch.Tensor) -> nn.Module:
    """``layer`` with output rows taken from ``source`` (-1: zero rows), each multiplied by
    ``factor`` (per new row)."""
    if isinstance(layer, QuantLinear):
        qweight, scale = layer.canonical_weights()
        factor = factor.to(scale.device)
        params = layer.quant_params()
        up = params.low_rank_up
        params = LayerQuantParams(
            rotation_block=params.rotation_block, smooth_divisor=params.smooth_divisor,
            act_scale_by_group=params.act_scale_by_group,
            clip_ratio_by_group=params.clip_ratio_by_group,
            low_rank_up=None if up is None else _gather(up, source, 0) * factor[:, None].to(up),
            low_rank_down=params.low_rank_down,
        )
        weight_sum = layer.weight_sum
        return _rebuilt(
            layer, _gather(qweight, source, 0), _gather(scale, source, 0, fill=1.0) * factor,
            None if layer.bias is None else _gather(layer.bias, source, 0) * factor.to(layer.bias),
            params, None if weight_sum is None else _gather(weight_sum, source, 0) * factor,
        )
    if isinstance(layer, nn.Linear):
        out = nn.Linear(layer.in_features, len(source), bias=layer.bias is not None,
                        device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(_gather(layer.weight, source, 0) * factor[:, None].to(layer.weight))
            if layer.bias is not None:
                out.bias.copy_(_gather(layer.bias, source, 0) * factor.to(layer.bias))
        return out.requires_grad_(layer.weight.requires_grad)
    raise TypeError(f"cannot pad the rows of {type(layer).__name__}")


def _pad_columns(layer: nn.Module, source: torch.Tensor) -> nn.Module:
    """``layer`` reading an input whose channels are ``source``'s (-1: a zero channel)."""
    if isinstance(layer, QuantLinear):
        qweight, scale = layer.canonical_weights()
        params = layer.quant_params()
        smooth, down = params.smooth_divisor, params.low_rank_down
        params = LayerQuantParams(
            rotation_block=None,
            smooth_divisor=None if smooth is None else _gather(smooth, source, 0, fill=1.0),
            act_scale_by_group=params.act_scale_by_group,
            clip_ratio_by_group=params.clip_ratio_by_group,
            low_rank_up=params.low_rank_up,
            low_rank_down=None if down is None else _gather(down, source, 1),
        )
        return _rebuilt(layer, _gather(qweight, source, 1), scale, layer.bias, params,
                        layer.weight_sum)
    if isinstance(layer, nn.Linear):
        out = nn.Linear(len(source), layer.out_features, bias=layer.bias is not None,
                        device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(_gather(layer.weight, source, 1))
            if layer.bias is not None:
                out.bias.copy_(layer.bias)
        return out.requires_grad_(layer.weight.requires_grad)
    raise TypeError(f"cannot pad the columns of {type(layer).__name__}")


def _paddable(attn, multiple: int) -> tuple[int, int] | None:
    """``(head_dim, padded)`` where ``attn`` can and needs to be padded, else None."""
    qkv = getattr(attn, "to_qkv", None)
    if (not getattr(attn, "fused_projections", False) or qkv is None
            or getattr(attn, "is_cross_attention", False)
            or not isinstance(qkv, (nn.Linear, QuantLinear))):
        return None
    out = attn.to_out[0]
    if not isinstance(out, (nn.Linear, QuantLinear)) or getattr(out, "rotation_block", None):
        return None
    width = qkv.out_features // 3
    if qkv.out_features != 3 * width or width % attn.heads or out.in_features != width:
        return None
    head_dim = width // attn.heads
    padded = padded_head_dim(head_dim, multiple)
    return None if padded == head_dim else (head_dim, padded)


def pad_attention_heads(transformer: nn.Module, multiple: int = FP8_HEAD_DIM_MULTIPLE) -> int:
    """Pad the heads of every eligible self-attention module of ``transformer`` to a
    multiple of ``multiple`` in its weights (module doc); the number of modules padded."""
    count = 0
    state = getattr(transformer, STATE_ATTR, None)  # a quantized denoiser's layer table
    for name, module in list(transformer.named_modules()):
        attn: Any = module  # diffusers' Attention, duck-typed
        dims = _paddable(attn, multiple)
        if dims is None:
            continue
        head_dim, padded = dims
        heads = attn.heads
        rows = padded_channels(3, heads, head_dim, padded)
        factor = torch.ones(len(rows))
        factor[: heads * padded] = math.sqrt(padded / head_dim)  # Q's rows: the logit scale
        attn.to_qkv = _pad_rows(attn.to_qkv, rows, factor)
        attn.to_out[0] = _pad_columns(attn.to_out[0], padded_channels(1, heads, head_dim, padded))
        attn.trdq_padded_head_dim = (head_dim, padded)
        if state is not None:  # the table holds the layers in use (the old ones are freed)
            for layer_name, layer in ((f"{name}.to_qkv", attn.to_qkv),
                                      (f"{name}.to_out.0", attn.to_out[0])):
                if layer_name in state.layers:
                    state.layers[layer_name] = layer
            state.padded_heads += 1
        count += 1
    return count
