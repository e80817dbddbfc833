"""Framework integrations (diffusers): layer selection, CFG detection, call plumbing, and
the pipeline families (PixArt, Latte, Flux, SD3, Wan) with what differs between them."""

from trdq.integrations.diffusers import (
    CfgSplitForward,
    architecture_of,
    find_denoiser,
    rotation_block_for,
    select_layers,
    set_submodule,
    wrap_pipeline_call,
)
from trdq.integrations.families import FAMILIES, Family, family_of_denoiser, family_of_pipeline

__all__ = [
    "FAMILIES",
    "CfgSplitForward",
    "Family",
    "architecture_of",
    "family_of_denoiser",
    "family_of_pipeline",
    "find_denoiser",
    "rotation_block_for",
    "select_layers",
    "set_submodule",
    "wrap_pipeline_call",
]
