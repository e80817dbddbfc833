"""Load a supported diffusers pipeline from the embedded zoo or a local folder, and run it.

This module is the one place that knows diffusers' call conventions for the pipeline
classes we serve (PixArt-alpha/Sigma, FLUX.1 and SD3/SD3.5 for images, Latte and Wan2.1
for videos), so the server, the CLI, the benchmark and the evaluator all generate the
same way. What differs between the families is declared once, in
``trdq.integrations.families``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trdq.data.grammar import complete_text
from trdq.integrations.families import FAMILIES, family_of_pipeline
from trdq.integrations.pipeline_args import native_size, text_length_kwargs
from trdq.zoo.registry import ZOO_DIR, ZOO_MODELS, zoo_path

logger = logging.getLogger(__name__)

IMAGE_PIPELINES = tuple(p for f in FAMILIES if f.task == "image" for p in f.pipelines)
VIDEO_PIPELINES = tuple(p for f in FAMILIES if f.task == "video" for p in f.pipelines)
SUPPORTED_PIPELINES = IMAGE_PIPELINES + VIDEO_PIPELINES


class UnsupportedPipelineError(ValueError):
    """The folder is not a diffusers pipeline of a class we can serve."""


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A zoo name or a local diffusers folder -> the folder. Never downloads."""
    if str(name_or_path) in ZOO_MODELS:
        path = zoo_path(str(name_or_path))
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"zoo model {name_or_path!r} is not built at {path}; run `python -m trdq.zoo.build`"
            )
        return path
    path = Path(name_or_path).expanduser()
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a zoo model ({', '.join(sorted(ZOO_MODELS))}) "
            "nor a local diffusers folder with a model_index.json"
        )
    return path


def pipeline_class_name(path: Path) -> str:
    return json.loads((path / "model_index.json").read_text())["_class_name"]


def resolve_device(setting: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; a named CUDA device must exist."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {setting} asked for, but no CUDA device is available")
    device = torch.device(setting)
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise RuntimeError(f"device {setting} asked for, but this machine has {count} GPU(s)")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs; fp32 on CPU (diffusers' CPU default and the quantizer's baseline)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_pipeline(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load a zoo pipeline or a local diffusers folder of a supported class, offline."""
    import diffusers

    path = resolve_model_path(name_or_path)
    class_name = pipeline_class_name(path)
    if class_name not in SUPPORTED_PIPELINES:
        raise UnsupportedPipelineError(
            f"{path} holds a {class_name}; supported: {', '.join(SUPPORTED_PIPELINES)}"
        )
    pipeline_cls = getattr(diffusers, class_name)
    pipe = pipeline_cls.from_pretrained(path, dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # the embedded models speak the shapes grammar: their partial captions get completed
    pipe.trdq_completes_captions = path.resolve().parent == ZOO_DIR.resolve()
    pipe.to(device)
    if class_name == "LattePipeline":
        _allow_shorter_videos(pipe.transformer)
    logger.info("loaded %s (%s) on %s in %s", name_or_path, class_name, device, dtype)
    return pipe


def pipeline_task(pipe) -> str:
    """'image' or 'video', from the pipeline class."""
    name = type(pipe).__name__
    if name in IMAGE_PIPELINES:
        return "image"
    if name in VIDEO_PIPELINES:
        return "video"
    raise UnsupportedPipelineError(f"unsupported pipeline class {name}")


def max_frames(pipe) -> int:
    """Longest video the denoiser's temporal position embedding covers (1 for images);
    for a denoiser without one (Wan's rotary positions) the family's default length."""
    length = getattr(pipe.transformer.config, "video_length", None)
    if length:
        return int(length)
    return int(family_of_pipeline(pipe).default_frames or 1)


def frame_step(pipe) -> int:
    """Frame counts a video pipeline takes are ``1 + k * frame_step``: Wan's VAE
    compresses time 4x after the first frame (WanPipeline silently rounds other counts);
    Latte takes any count (1)."""
    if family_of_pipeline(pipe).name == "wan":
        return int(getattr(pipe, "vae_scale_factor_temporal", 4))
    return 1


def default_size(pipe) -> tuple[int, int]:
    """(height, width) the pipeline generates when a request names none."""
    return native_size(pipe)


def size_multiple(pipe) -> int:
    """Width and height must be multiples of this: VAE downscale x the denoiser's spatial
    patch (x Flux's 2 x 2 latent packing). Wan's VAE factor is ``vae_scale_factor_spatial``
    and its patch a (t, h, w) triple."""
    factor = getattr(pipe, "vae_scale_factor_spatial", None) or pipe.vae_scale_factor
    patch = getattr(pipe.transformer.config, "patch_size", 1) or 1
    if isinstance(patch, (list, tuple)):
        patch = patch[-1]
    return int(factor) * int(patch) * family_of_pipeline(pipe).latent_packing


def min_inference_steps(pipe) -> int:
    """Fewest sampler steps the pipeline supports.

    diffusers' PixArt pipelines treat a single step as a one-step distilled model and
    index the scheduler output as (prev, denoised); multistep solvers return only prev,
    so one step fails there. Latte, Flux, SD3 and Wan have no such branch.
    """
    return family_of_pipeline(pipe).min_steps


def _allow_shorter_videos(transformer: torch.nn.Module) -> None:
    """Let a Latte transformer denoise fewer frames than its `video_length`.

    Latte adds a fixed sin-cos temporal embedding of `video_length` rows; its rows are
    positions 0..L-1, so a shorter clip needs only the first rows. A pre-forward hook
    swaps in that prefix for the call (the full table is kept aside), with no change
    to diffusers' code.
    """
    full_table = transformer.temp_pos_embed

    def use_prefix(module, args, kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        num_frames = hidden_states.shape[2]
        module.temp_pos_embed = full_table[:, :num_frames].to(hidden_states.device)

    transformer.register_forward_pre_hook(use_prefix, with_kwargs=True)


@dataclass
class GenerationRequest:
    """What one pipeline call produces: a batch of prompts with one seed each."""

    prompts: list[str]
    seeds: list[int]
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompts: list[str] | None = None
    num_frames: int | None = None


StepCallback = Callable[[int, int], None]  # (step_index, num_steps)


def served_prompts(pipe, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """The texts the pipeline is given for ``prompts``.

    The embedded (zoo) models were trained on the shapes grammar, where a partial caption
    ("a red circle") labels a picture whose unnamed attributes were drawn at random. Their
    pipelines draw those attributes themselves, from the prompt's seed
    (``trdq.data.grammar.complete_text``), and encode the full caption: a sample of the very
    distribution the partial caption stands for, which the text encoder has seen far more
    often as full captions. Other pipelines get their prompts as written.
    """
    if not getattr(pipe, "trdq_completes_captions", False):
        return list(prompts)
    video = pipeline_task(pipe) == "video"
    return [complete_text(p, s, video=video) for p, s in zip(prompts, seeds)]


def generate(pipe, request: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
    """Run the pipeline; returns uint8 [B, H, W, 3] (images) or [B, F, H, W, 3] (videos).

    Each prompt gets its own CPU generator seeded with its seed, so an output depends
    only on its own seed and parameters, not on what else is in the batch.
    """
    if len(request.prompts) != len(request.seeds):
        raise ValueError("one seed per prompt is required")
    if request.num_inference_steps < min_inference_steps(pipe):
        raise ValueError(f"this pipeline needs at least {min_inference_steps(pipe)} steps")
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in request.seeds]
    params = inspect.signature(type(pipe).__call__).parameters
    kwargs: dict = {
        "prompt": served_prompts(pipe, request.prompts, request.seeds),
        "negative_prompt": request.negative_prompts or [""] * len(request.prompts),
        "width": request.width,
        "height": request.height,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "generator": generators,
        "output_type": "np",
        "clean_caption": False,
        "use_resolution_binning": False,
        **text_length_kwargs(pipe),
    }
    if on_step is not None:
        steps = request.num_inference_steps
        if "callback_on_step_end" in params:

            def step_end(_pipe, step_index, _timestep, callback_kwargs):
                on_step(step_index, steps)
                return callback_kwargs

            kwargs["callback_on_step_end"] = step_end
        else:
            # PixArt-alpha/Sigma take only the legacy per-step callback; an unknown
            # `callback_on_step_end` would be swallowed by their **kwargs and never run.
            kwargs["callback"] = lambda step_index, _timestep, _latents: on_step(step_index, steps)
            kwargs["callback_steps"] = 1
    task = pipeline_task(pipe)
    if task == "video":
        # Latte names it video_length, Wan num_frames (Wan wants 4k + 1 frames)
        frames = request.num_frames or max_frames(pipe)
        kwargs["video_length" if "video_length" in params else "num_frames"] = frames
    # only what this class names: Flux/SD3/Wan have no clean_caption or resolution
    # binning, and a **kwargs (PixArt's) would swallow an unknown argument silently
    output = pipe(**{k: v for k, v in kwargs.items() if k in params})
    output = output.images if task == "image" else output.frames
    return _to_uint8(np.asarray(output))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def weight_bytes(module: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters and persistent buffers by dtype (packed low-bit weights included)."""
    totals: dict[str, int] = {}
    seen: set[int] = set()
    for submodule in module.modules():
        tensors = list(submodule._parameters.items()) + [
            (name, buf)
            for name, buf in submodule._buffers.items()
            if name not in submodule._non_persistent_buffers_set
        ]
        for _, tensor in tensors:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            key = str(tensor.dtype).removeprefix("torch.")
            totals[key] = totals.get(key, 0) + tensor.numel() * tensor.element_size()
    return totals


def pipeline_weight_bytes(pipe) -> dict[str, dict[str, int]]:
    """weight_bytes for every torch component of a pipeline: {component: {dtype: bytes}}."""
    return {
        name: weight_bytes(component)
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module)
    }
