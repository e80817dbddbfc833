"""``calibrate_pipeline``: run the FP pipeline on the prompts with the statistics hooks
attached, then solve every target layer."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from trdq.calibration.collect import StatsCollector
from trdq.calibration.faithful import solve_faithful
from trdq.calibration.result import CalibrationResult
from trdq.calibration.search import solve_layer
from trdq.config import QuantConfig
from trdq.integrations.diffusers import (
    find_denoiser,
    select_layers,
    unwrap_pipeline_call,
    wrap_pipeline_call,
)
from trdq.integrations.pipeline_args import calibration_call_kwargs
from trdq.timestep import GroupMap, QuantContext, TimestepHook

logger = logging.getLogger(__name__)

__all__ = ["calibrate_pipeline"]


@torch.no_grad()
def calibrate_pipeline(
    pipe: Any,
    config: QuantConfig,
    prompts: list[str],
    *,
    seed: int = 0,
    progress: bool = True,
    call_kwargs: dict[str, Any] | None = None,
) -> CalibrationResult:
    """Run the FP pipeline on ``prompts`` and solve every target layer's parameters."""
    start = time.perf_counter()
    denoiser = find_denoiser(pipe)
    targets, _ = select_layers(denoiser, config)
    context = QuantContext(num_groups=config.num_groups)
    hook = TimestepHook(GroupMap(tuple(config.boundaries())), context).attach(denoiser)
    wrap_pipeline_call(pipe, hook)
    collector = StatsCollector(targets, config, context, seed).attach()
    kwargs = calibration_call_kwargs(pipe, config)
    kwargs.update(call_kwargs or {})
    timesteps: list[float] = []
    try:
        batches = [prompts[i : i + config.calib_batch_size]
                   for i in range(0, len(prompts), config.calib_batch_size)]
        for i, batch in enumerate(tqdm(batches, desc="trdq calibrate", disable=not progress)):
            generator = torch.Generator(device="cpu").manual_seed(seed + i)
            pipe(prompt=batch, generator=generator, **kwargs)
            timesteps.extend(hook.timesteps)
    finally:
        collector.detach()
        hook.detach()
        unwrap_pipeline_call(pipe, hook)
    result = CalibrationResult(timesteps=timesteps)
    result.groups_seen = sorted({hook.group_map.group_of(t) for t in timesteps})
    idle = sorted(name for name, st in collector.stats.items() if not st.rows)
    if idle:  # nothing to calibrate them on: an error that names them, not an empty search
        raise ValueError(
            f"{len(idle)} linear layer(s) of the denoiser never ran during calibration "
            f"({', '.join(idle[:4])}{', ...' if len(idle) > 4 else ''}); remove unused "
            "modules (e.g. the unfused copies left by fuse_qkv_projections) or exclude them "
            "with the config's fp_layer_patterns")
    logger.info("collected the inputs of %d layers over %d denoiser calls in %.1f s",
                len(targets), len(timesteps), time.perf_counter() - start)
    gen = torch.Generator().manual_seed(seed)
    names = sorted(targets)
    tenth = max(1, len(names) // 10)
    for i, name in enumerate(tqdm(names, desc="trdq search", disable=not progress)):
        if i % tenth == 0:  # where a long calibration is, in logs that outlive a time limit
            logger.info("searching layer %d/%d (%s) at %.1f s", i + 1, len(names), name,
                        time.perf_counter() - start)
        st = collector.stats[name]
        if config.faithful:
            result.faithful[name] = solve_faithful(targets[name], st, config, gen)
        else:
            result.params[name] = solve_layer(targets[name], st, config, gen)
    result.seconds = time.perf_counter() - start
    logger.info("calibrated %d layers on %d prompts in %.1f s (groups seen %s)",
                len(targets), len(prompts), result.seconds, result.groups_seen)
    return result
