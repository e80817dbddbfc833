"""``torch.compile`` of the denoiser in place: the server's TRDQ_COMPILE and the ``+compile``
rows of ``trdq bench``."""

from __future__ import annotations

import torch

__all__ = ["compile_denoiser"]


def _raise_recompile_limits() -> None:
    # one compiled block per timestep group (QuantLinear reads the current group)
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 4096


def compile_denoiser(transformer: torch.nn.Module, mode: str) -> None:
    """In-place torch.compile (default mode; max-autotune is never used in timed runs)."""
    _raise_recompile_limits()
    if mode == "full":
        transformer.compile()
        return
    for attr in ("transformer_blocks", "temporal_transformer_blocks"):
        for block in getattr(transformer, attr, []) or []:
            block.compile()
