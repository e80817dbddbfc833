"""Row names of ``trdq bench``: what a row is called, and what each suffix of its name asks for.

A row is ``KIND-MODE`` and then suffixes: ``KIND`` is ``fp32``, ``bf16``, a TR-DQ preset
(``w8a8``, ``fp8``, ...), ``torchao-fp8row`` / ``torchao-int8`` or ``fp8swap``; ``MODE`` is
``eager`` or ``compile`` (``compile+cg`` on CUDA). ``default_rows`` lists the rows a run
times when ``--rows`` names none; the runner (``trdq.tools.bench_runner``) takes the
suffixes off a name, last first, as it prepares the row.

Row suffixes: ``+cg`` (CUDA graphs), ``+fp8attn`` / ``+fa3attn`` (self-attention through
FA3 in e4m3 / bf16, ``trdq.nn.attention``), ``+fp8longattn`` (e4m3 on long sequences only),
``+fp8staticattn`` (e4m3 with statistics recorded per timestep group over the row's
calibration prompts first, ``trdq.api.calibrate_attention``), ``+t5int8`` / ``+t5int4``, ``+vaetile``,
``+torchops`` (CPU), ``+sysmalloc`` (CPU: glibc's own malloc thresholds, without
``TRDQ_HOST_MALLOC=reuse``), ``+t5compile`` (written last: the text encoders' layers compiled too;
``+t5cg`` also replays them from CUDA graphs),
``+multikernel`` (Inductor's ``triton.multi_kernel``, which also generates a persistent
variant of each row reduction and keeps the faster), ``+fusednorm`` (the blocks'
LayerNorm entries through ``trdq.nn.fused_block``; ``+fusedff`` also its GELU kernel and
FLUX/SD3/Wan MLPs' GELU + quantizer through ``trdq.nn.fused_mlp``: what the server fuses
under ``TRDQ_FUSED_BLOCK=auto``), ``+fluxentry`` (FLUX's double-stream feed-forward
entries through ``trdq.nn.flux_block``, served only with ``TRDQ_FUSED_BLOCK=1``),
``+tritoncast`` (with ``+fp8staticattn``: the Q/K/V casts as one Triton launch) and
``+fusedrope`` (with ``+fp8staticattn``: FLUX's q/k norms, rotary embedding and casts as
one launch, ``trdq.nn.flux_attention``), ``+fa3cross`` (PixArt/Latte cross-attention
through FA3 bf16, ``trdq.nn.cross_attention``) and ``+padheads`` (self-attention heads
padded to FA3's FP8 multiple in the weights, ``trdq.nn.padded_heads``) after all the others,
in any order.
"""

from __future__ import annotations

import torch

__all__ = [
    "FA3_CROSS",
    "FLUX_ENTRY",
    "FUSED_FF",
    "FUSED_NORM",
    "FUSED_ROPE",
    "MULTI_KERNEL",
    "PAD_HEADS",
    "SYSTEM_MALLOC",
    "T5_COMPILE",
    "T5_GRAPHS",
    "TORCH_OPS",
    "TRITON_CAST",
    "VAE_TILING",
    "default_rows",
]

#: row suffix: decode through diffusers' tiled VAE (``vae.enable_tiling()``) in that row
VAE_TILING = "+vaetile"
#: row suffix (CPU): cpu_int8 quantizes activations with its torch ops, not its C pass
TORCH_OPS = "+torchops"
#: row suffix (CPU): glibc's own malloc thresholds for the row, as without
#: ``TRDQ_HOST_MALLOC=reuse`` (freed activations unmapped; trdq/runtime/host_memory.py)
SYSTEM_MALLOC = "+sysmalloc"
#: row suffix: also torch.compile the text encoders' layers (``compile_text_encoders``)
T5_COMPILE = "+t5compile"
#: row suffix, in place of ``+t5compile``: the compiled text encoders also replayed from
#: CUDA graphs (``graph_text_encoders``)
T5_GRAPHS = "+t5cg"
#: row suffix, written last: compile with Inductor's ``triton.multi_kernel = 1`` (each
#: reduction also as a persistent kernel, the faster kept at run time; LayerNorm over 1152
#: or 3072 channels is past the default persistent threshold of 1024)
MULTI_KERNEL = "+multikernel"
#: row suffix, written last: ``fuse_block_norms`` on the quantized denoiser (PixArt/Latte
#: blocks: residual add, LayerNorm, modulate and e4m3 quantizer in one kernel)
FUSED_NORM = "+fusednorm"
#: row suffix, written last: ``+fusednorm`` and the feed-forward's GELU + quantizer kernel
#: (PixArt/Latte through ``fuse_block_norms``; FLUX/SD3/Wan MLPs through ``fuse_mlps``)
FUSED_FF = "+fusedff"
#: row suffix, written last: FLUX's double-stream feed-forward entries (residual add,
#: LayerNorm, modulate, quantizer) as one kernel each (``trdq.nn.flux_block``)
FLUX_ENTRY = "+fluxentry"
#: row suffix, written last: static FP8 attention's Q/K/V casts as one Triton launch
#: (``trdq.kernels.triton_attention_quant``) instead of Inductor's three kernels
TRITON_CAST = "+tritoncast"
#: row suffix, written last: with ``+fp8staticattn``, FLUX's attention prologue (q/k
#: RMSNorm, rotary embedding, e4m3 casts) as one Triton launch (``trdq.nn.flux_attention``)
FUSED_ROPE = "+fusedrope"
#: row suffix, written last: PixArt/Latte cross-attention over the text tokens through FA3
#: (bf16, the key-padding mask as kept keys: ``trdq.nn.cross_attention``) instead of SDPA
FA3_CROSS = "+fa3cross"
#: row suffix, written last: self-attention heads padded to FA3's FP8 head-dim multiple in
#: the weights right after quantizing (``trdq.nn.padded_heads``), before fusions and
#: ``+fp8staticattn``'s recording
PAD_HEADS = "+padheads"


def default_rows(device: torch.device, quant: list[str], torchao: bool, swap: bool) -> list[str]:
    rows = ["fp32-eager"] if device.type == "cpu" else []
    cg = ["compile+cg"] if device.type == "cuda" else []
    rows += [f"bf16-{m}" for m in ["eager", "compile"] + cg]
    for q in quant:
        rows += [f"{q}-{m}" for m in ["eager", "compile"] + cg]
    if swap:
        rows += [f"fp8swap-{m}" for m in ["eager", "compile"] + cg]
    if torchao:
        rows += ["torchao-fp8row-compile"] if device.type == "cuda" else []
        rows += ["torchao-int8-compile"]
    return rows
