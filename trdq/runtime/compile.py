"""``torch.compile`` of the denoiser in place: the server's TRDQ_COMPILE and the ``+compile``
rows of ``trdq bench``.

Regional compilation (diffusers' ``compile_repeated_blocks``, the PyTorch regional
compilation recipe): each repeated transformer block is compiled on its own, so one
compile serves every block of a class and the timestep hook stays outside the graphs.
The blocks are found by structure, not by attribute name, because the families name
their lists differently (PixArt/SD3 ``transformer_blocks``, Latte also
``temporal_transformer_blocks``, FLUX also ``single_transformer_blocks``, Wan ``blocks``);
a denoiser with no repeated block is an error rather than a silently eager "compiled" run.
"""

from __future__ import annotations

import torch

__all__ = ["compile_denoiser", "repeated_blocks"]


def _raise_recompile_limits() -> None:
    # one compiled block per timestep group (QuantLinear reads the current group)
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 4096


def repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's repeated blocks, in model order: every entry of a ``ModuleList``
    child of the transformer, and every module whose class the model lists in diffusers'
    ``_repeated_blocks``."""
    named = set(getattr(transformer, "_repeated_blocks", None) or ())
    found: dict[int, torch.nn.Module] = {}
    for child in transformer.children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                found.setdefault(id(block), block)
    if named:
        for module in transformer.modules():
            if type(module).__name__ in named:
                found.setdefault(id(module), module)
    return list(found.values())


def compile_denoiser(transformer: torch.nn.Module, mode: str) -> int:
    """In-place torch.compile (default mode; max-autotune is never used in timed runs).

    ``mode`` is ``"regional"`` (each repeated block) or ``"full"`` (the whole module).
    Returns the number of modules compiled; raises ``ValueError`` when a regional compile
    finds no repeated block or the mode is unknown.
    """
    _raise_recompile_limits()
    if mode == "full":
        transformer.compile()
        return 1
    if mode != "regional":
        raise ValueError(f"unknown compile mode {mode!r}: regional or full")
    blocks = repeated_blocks(transformer)
    if not blocks:
        raise ValueError(
            f"{type(transformer).__name__} has no repeated blocks (no ModuleList child and no "
            "_repeated_blocks): compile it whole (--compile full)")
    for block in blocks:
        block.compile()
    return len(blocks)
