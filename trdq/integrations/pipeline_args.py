"""Keyword arguments for calling a diffusers pipeline during calibration.

Only arguments the pipeline's ``__call__`` accepts are passed, so the same code drives
PixArt-alpha/Sigma, Latte, Flux, SD3, Wan and other DiT pipelines. ``clean_caption=False``
avoids the bs4/ftfy dependency; resolution binning is off so the calibration size is what
we ask. ``max_sequence_length`` (Flux, SD3, Wan) is bounded by the T5 tokenizer's own
length, so a folder whose tokenizer is shorter than the pipeline's default (512/256/512)
is not padded past it; ``generate`` uses the same rule.
"""

from __future__ import annotations

import inspect
from typing import Any

from trdq.config import QuantConfig

__all__ = ["calibration_call_kwargs", "native_size", "text_length_kwargs"]


def _native_size(pipe: Any, transformer: Any) -> int | None:
    """The denoiser's training resolution in pixels (some pipelines default to 512
    regardless of the model, e.g. Latte): latent sample_size x VAE scale factor, or the
    pipeline's ``default_sample_size`` (Flux) x the factor."""
    sample = getattr(getattr(transformer, "config", None), "sample_size", None)
    if not isinstance(sample, int):
        sample = getattr(pipe, "default_sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(sample, int) and isinstance(factor, int):
        return sample * factor
    return None


def native_size(pipe: Any) -> tuple[int, int]:
    """(height, width) a pipeline generates by default: its denoiser's training size, or
    the ``height``/``width`` defaults of its ``__call__`` (Wan: 480 x 832)."""
    size = _native_size(pipe, getattr(pipe, "transformer", None))
    if size is not None:
        return size, size
    params = inspect.signature(type(pipe).__call__).parameters
    height, width = (params[k].default if k in params else None for k in ("height", "width"))
    if isinstance(height, int) and isinstance(width, int):
        return height, width
    raise ValueError(f"{type(pipe).__name__}: no default size known")


def text_length_kwargs(pipe: Any) -> dict[str, int]:
    """``max_sequence_length`` bounded by the family's T5 tokenizer length, if any."""
    from trdq.integrations.families import family_of_pipeline

    params = inspect.signature(type(pipe).__call__).parameters
    param = params.get("max_sequence_length")
    attr = family_of_pipeline(pipe).t5_tokenizer
    tokenizer = getattr(pipe, attr, None) if attr else None
    if param is None or not isinstance(param.default, int) or tokenizer is None:
        return {}
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < param.default:
        return {"max_sequence_length": limit}
    return {}


def calibration_call_kwargs(pipe: Any, config: QuantConfig) -> dict[str, Any]:
    params = inspect.signature(type(pipe).__call__).parameters
    kwargs: dict[str, Any] = {
        "num_inference_steps": config.calib_steps,
        "guidance_scale": config.calib_guidance_scale,
        "output_type": "latent",
    }
    if "clean_caption" in params:
        kwargs["clean_caption"] = False
    if "use_resolution_binning" in params:
        kwargs["use_resolution_binning"] = False
    transformer = getattr(pipe, "transformer", None)
    native = _native_size(pipe, transformer)
    height = config.calib_height or native
    width = config.calib_width or native
    if height is not None:
        kwargs["height"] = height
    if width is not None:
        kwargs["width"] = width
    frames = config.calib_num_frames
    if frames is None and transformer is not None:
        frames = getattr(getattr(transformer, "config", None), "video_length", None)
    if frames is not None:
        for name in ("video_length", "num_frames"):
            if name in params:
                kwargs[name] = frames
                break
    kwargs.update(text_length_kwargs(pipe))
    if "enable_temporal_attentions" in params:
        kwargs["enable_temporal_attentions"] = True
    return {k: v for k, v in kwargs.items() if k in params}
