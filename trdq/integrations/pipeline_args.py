"""Keyword arguments for calling a diffusers pipeline during calibration.

Only arguments the pipeline's ``__call__`` accepts are passed, so the same code drives
PixArt-alpha/Sigma, Latte and other DiT pipelines. ``clean_caption=False`` avoids the
bs4/ftfy dependency; resolution binning is off so the calibration size is what we ask.
"""

from __future__ import annotations

import inspect
from typing import Any

from trdq.config import QuantConfig

__all__ = ["calibration_call_kwargs"]


def _native_size(pipe: Any, transformer: Any) -> int | None:
    """The denoiser's training resolution in pixels (some pipelines default to 512
    regardless of the model, e.g. Latte): latent sample_size x VAE scale factor."""
    sample = getattr(getattr(transformer, "config", None), "sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(sample, int) and isinstance(factor, int):
        return sample * factor
    return None


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
    if "enable_temporal_attentions" in params:
        kwargs["enable_temporal_attentions"] = True
    return {k: v for k, v in kwargs.items() if k in params}
