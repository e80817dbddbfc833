"""One batch through one pipeline: the code every worker runs, thread or process.

``run_batch`` turns the batch's specs into one pipeline call on the worker's device and
returns each job's pixels with the call's stage timings; metrics go to whatever sink the
worker has (the app's Metrics for a thread worker, a recorder in a worker process).
"""

from __future__ import annotations

import gc
import logging
import os
import resource
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from server.engine.jobs import JobSpec
from server.engine.models import MetricSink, ModelSet, ServedModel
from server.errors import DeviceOutOfMemoryError
from trdq.pipeline import GenerationRequest, generate

logger = logging.getLogger(__name__)

#: Test hook: called on the worker before each pipeline call with the batch's specs;
#: raising there simulates a failure inside generation.
FaultHook = Callable[[list[JobSpec]], None]


@dataclass
class BatchResult:
    """A finished pipeline call: one pixel array per job (plain values: picklable)."""

    pixels: list[np.ndarray]  # job i: [N_i, H, W, 3] or [N_i, F, H, W, 3] uint8
    model: str
    quant: str
    device: str
    text_encode_s: float
    denoise_s: float
    vae_decode_s: float


def on_device(device: torch.device) -> AbstractContextManager:
    """Make the worker's GPU current (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def run_batch(
    models: ModelSet[ServedModel], device: torch.device, specs: list[JobSpec],
    on_step: Callable[[int], None], metrics: MetricSink, fault_hook: FaultHook | None = None,
) -> BatchResult:
    """One pipeline call for the whole batch. ``on_step(steps_done)`` runs after every
    denoising step (it raises GenerationCancelledError to stop the call)."""
    first = specs[0]
    model = models.get(first.task, first.quant)
    prompts, negatives, seeds = [], [], []
    for spec in specs:
        count = len(spec.seeds)
        prompts += [spec.prompt] * count
        negatives += [spec.negative_prompt] * count
        seeds += list(spec.seeds)
    request = GenerationRequest(
        prompts=prompts, seeds=seeds, width=first.width, height=first.height,
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale, negative_prompts=negatives,
        num_frames=first.num_frames,
    )
    try:
        if fault_hook is not None:
            fault_hook(list(specs))
        with on_device(device), model.profiler.call() as profile:
            pixels = generate(model.pipe, request,
                              on_step=lambda step_index, num_steps: on_step(step_index + 1))
    except torch.cuda.OutOfMemoryError:
        logger.warning("device out of memory on a batch of %d job(s)", len(specs))
        gc.collect()
        if device.type == "cuda":
            with on_device(device):
                torch.cuda.empty_cache()
        raise DeviceOutOfMemoryError(
            "the device ran out of memory; retry later or with less work",
            headers={"Retry-After": "1"},
        ) from None
    finally:
        record_memory(metrics, device)
    _observe_generation(metrics, model, profile, pixels)
    per_job, start = [], 0
    for spec in specs:
        per_job.append(pixels[start:start + len(spec.seeds)])
        start += len(spec.seeds)
    return BatchResult(
        pixels=per_job, model=model.name, quant=model.quant, device=str(device),
        text_encode_s=profile.text_encode_s, denoise_s=profile.denoise_s,
        vae_decode_s=profile.decode_s,
    )


def warm_up(models: ModelSet[ServedModel], device: torch.device,
            batch_sizes: list[int] | None = None, size: tuple[int, int] | None = None,
            steps: int = 2) -> None:
    """Short generations per variant (TRDQ_WARMUP_*), so the first requests pay no lazy
    set-up: every batch size at ``size`` (None: the model's default), each shape twice
    where the denoiser replays CUDA graphs (the first call per shape runs eagerly, the
    second captures)."""
    for model in models.all():
        width, height = size or (model.default_width, model.default_height)
        if width % model.size_multiple or height % model.size_multiple:
            raise ValueError(
                f"TRDQ_WARMUP_SIZE={width}x{height}: {model.name} needs multiples of "
                f"{model.size_multiple}"
            )
        num_frames = ((min(2, model.max_frames) if model.frame_step == 1 else 1)
                      if model.task == "video" else None)
        for batch_size in batch_sizes or [1]:
            request = GenerationRequest(
                prompts=["warm-up"] * batch_size, seeds=list(range(batch_size)), width=width,
                height=height, num_inference_steps=max(steps, model.min_steps),
                guidance_scale=4.5, num_frames=num_frames,
            )
            for _ in range(2 if model.info.get("cuda_graphs") else 1):
                with on_device(device):
                    generate(model.pipe, request)
        logger.info("warmed up %s at %s: %dx%d, batch sizes %s, %d steps", model.name,
                    model.quant, width, height, batch_sizes or [1], steps)


def _observe_generation(metrics: MetricSink, model: ServedModel, profile,
                        pixels: np.ndarray) -> None:
    stage = metrics.stage_duration
    labels = {"model": model.name, "quant": model.quant}
    stage.labels(stage="text_encode", **labels).observe(profile.text_encode_s)
    stage.labels(stage="denoise", **labels).observe(profile.denoise_s)
    stage.labels(stage="vae_decode", **labels).observe(profile.decode_s)
    if model.task == "image":
        metrics.generated_images.inc(pixels.shape[0])
    else:
        metrics.generated_video_frames.inc(pixels.shape[0] * pixels.shape[1])


def record_memory(metrics: MetricSink, device: torch.device) -> None:
    """trdq_device_memory_bytes for ``device`` (CPU: this process's resident memory)."""
    gauge = metrics.device_memory
    if device.type == "cuda":
        name = str(device)
        gauge.labels(device=name, kind="allocated").set(torch.cuda.memory_allocated(device))
        gauge.labels(device=name, kind="reserved").set(torch.cuda.memory_reserved(device))
        gauge.labels(device=name, kind="peak").set(torch.cuda.max_memory_allocated(device))
        gauge.labels(device=name, kind="total").set(torch.cuda.mem_get_info(device)[1])
        return
    rss = _resident_bytes()
    gauge.labels(device="cpu", kind="allocated").set(rss)
    gauge.labels(device="cpu", kind="reserved").set(rss)
    gauge.labels(device="cpu", kind="peak").set(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    gauge.labels(device="cpu", kind="total").set(_memory_limit_bytes())


def _memory_limit_bytes() -> int:
    """The cgroup memory limit when one is set, else the machine's physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as limit_file:
                text = limit_file.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), physical)
    return physical


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
