"""Framework integrations (diffusers): layer selection, CFG detection, call plumbing."""

from trdq.integrations.diffusers import (
    CfgSplitForward,
    architecture_of,
    find_denoiser,
    rotation_block_for,
    select_layers,
    set_submodule,
    wrap_pipeline_call,
)

__all__ = [
    "CfgSplitForward",
    "architecture_of",
    "find_denoiser",
    "rotation_block_for",
    "select_layers",
    "set_submodule",
    "wrap_pipeline_call",
]
