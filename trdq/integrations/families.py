"""What differs between the diffusers pipeline families we quantize and serve.

One ``Family`` per pipeline family, found by the pipeline's (or the denoiser's) class
name. It says:

- ``task``: image or video;
- ``timestep_multiplier``: what turns the ``timestep`` the pipeline passes to its
  denoiser into the training scale [0, 1000] the timestep groups live on. FluxPipeline
  passes ``t / 1000`` (the flow-matching sigma); SD3 and Wan pass ``t`` itself.
- ``cfg_batched``: whether ``guidance_scale > 1`` means one denoiser call on a
  [uncond x B, cond x B] batch (PixArt, Latte, SD3). FLUX.1-dev/schnell are guidance-
  distilled: ``guidance_scale`` feeds the guidance embedding, the batch holds only cond
  rows (Flux's optional ``true_cfg_scale`` runs the branches as separate calls). Wan2.1
  runs cond and uncond as two calls per step. Where the branches are separate calls the
  quantized layers see one branch per call, so CFG-wise parameters (a column per half)
  and CFG-delta do not apply: both branches use the same per-group parameters, which
  the calibration collects over the rows of both calls. (Per-branch parameters there
  would need the calibration to file each call's rows under its branch, which Wan's
  ``cache_context("cond"/"uncond")`` names, and the layers to read the branch.) SD3's
  optional skip-layer guidance adds cond-only calls inside a CFG call; the server does
  not use it, and the layers would read such a call's batch as halves.
- ``fp_layer_patterns``: conditioning linears kept out of activation quantization on top
  of ``QuantConfig.fp_layer_patterns`` (they get weight-only integer weights, like
  PixArt's adaLN and caption projection): the timestep/guidance/pooled-text embedders,
  the text-token projection (``context_embedder``, PixArt's caption projection) and the
  per-block adaLN projections (``norm1.linear``, ``norm1_context.linear``, Flux single
  blocks' ``norm.linear``), which see one row per sample per step. They are added here,
  not to the config's defaults, so existing configs (and their calibration
  fingerprints) do not change. ``block_modulation_patterns`` names the per-block adaLN
  ones among them, which take ``QuantConfig.modulation_weight_bits`` instead of
  ``embedder_weight_bits`` (4 bits in the W4 presets: FLUX.1-dev holds 3.3B weights there).
- ``full_precision``: (pattern, reason) of linears left exactly as they are, not even
  weight-only: Wan's ``condition_embedder.time_embedder`` is read for its parameters'
  dtype (``next(time_embedder.parameters())``), which an integer-weight layer without
  float parameters breaks; it is 2 small linears (freq_dim -> dim -> dim).
- ``min_steps``: the fewest sampler steps (PixArt's multistep DPM-Solver needs 2).
- ``default_frames``: the frame count a video family generates by default (Wan: 81).
- ``latent_packing``: latent pixels per token side the pipeline packs before the
  denoiser's own patching (Flux packs 2 x 2 latents into one 64-channel token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FAMILIES", "Family", "family_of_denoiser", "family_of_pipeline"]

#: the per-block adaLN projections of the MM-DiT families (FLUX double and single
#: blocks, SD3 blocks): weight-only at ``QuantConfig.modulation_weight_bits``
_BLOCK_MODULATION = (
    r"(^|\.)norm1(_context)?\.linear$",
    r"(^|\.)norm\.linear$",
)
_ADALN_AND_TEXT = (
    r"(^|\.)time_text_embed(\.|$)",
    r"(^|\.)context_embedder$",
    *_BLOCK_MODULATION,
)


_WAN_TIME_REASON = "full precision: WanTransformer3DModel reads this module's parameter dtype"


@dataclass(frozen=True)
class Family:
    name: str
    task: str
    pipelines: tuple[str, ...]
    denoisers: tuple[str, ...]
    timestep_multiplier: float = 1.0
    cfg_batched: bool = True
    fp_layer_patterns: tuple[str, ...] = ()
    full_precision: tuple[tuple[str, str], ...] = ()
    min_steps: int = 1
    #: frames of a default video (None: the denoiser's ``video_length``)
    default_frames: int | None = None
    latent_packing: int = 1
    #: name of the T5-style tokenizer attribute whose length bounds ``max_sequence_length``
    t5_tokenizer: str | None = None
    #: which of ``fp_layer_patterns`` are per-block adaLN projections (module doc)
    block_modulation_patterns: tuple[str, ...] = ()


FAMILIES: tuple[Family, ...] = (
    Family("pixart", "image", ("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
           ("PixArtTransformer2DModel",), min_steps=2),
    Family("latte", "video", ("LattePipeline",), ("LatteTransformer3DModel",)),
    Family("flux", "image", ("FluxPipeline",), ("FluxTransformer2DModel",),
           timestep_multiplier=1000.0, cfg_batched=False, latent_packing=2,
           fp_layer_patterns=_ADALN_AND_TEXT, t5_tokenizer="tokenizer_2",
           block_modulation_patterns=_BLOCK_MODULATION),
    Family("sd3", "image", ("StableDiffusion3Pipeline",), ("SD3Transformer2DModel",),
           fp_layer_patterns=_ADALN_AND_TEXT, t5_tokenizer="tokenizer_3",
           block_modulation_patterns=_BLOCK_MODULATION),
    Family("wan", "video", ("WanPipeline",), ("WanTransformer3DModel",), cfg_batched=False,
           fp_layer_patterns=(r"(^|\.)condition_embedder(\.|$)",),
           full_precision=((r"(^|\.)condition_embedder\.time_embedder\.", _WAN_TIME_REASON),),
           default_frames=81,
           t5_tokenizer="tokenizer"),
)

#: a denoiser or pipeline of no known family: PixArt-like conventions
GENERIC = Family("generic", "image", (), ())


def _by_class(name: str, attr: str) -> Family | None:
    return next((f for f in FAMILIES if name in getattr(f, attr)), None)


def family_of_pipeline(pipe: Any) -> Family:
    """The family of a pipeline (instance or class name); GENERIC when unknown."""
    name = pipe if isinstance(pipe, str) else type(pipe).__name__
    return _by_class(name, "pipelines") or GENERIC


def family_of_denoiser(denoiser: Any) -> Family:
    """The family of a denoiser module (by class name); GENERIC when unknown."""
    return _by_class(type(denoiser).__name__, "denoisers") or GENERIC
