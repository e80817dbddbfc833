"""Shared by the Flux / SD3 / Wan tests: a fast recipe, captured denoiser calls, spies."""

from __future__ import annotations

from typing import Any

import torch

from tests.helpers.quant import fast
from trdq import api
from trdq.primitives import sqnr_db

#: call arguments of the tiny family pipelines (trdq.testing.tiny_families)
IMAGE_CALL = {"height": 32, "width": 32, "max_sequence_length": 16}
VIDEO_CALL = {**IMAGE_CALL, "num_frames": 5}
PROMPTS = ["a red circle top left", "a blue square moving right"]


def latent_run(pipe, video: bool, steps: int = 3, guidance: float = 3.0):
    """A callable giving one seeded run's latents of a tiny family pipeline (the first
    prompt, ``steps`` steps), and the call's keyword arguments without the output type."""
    call = {**(VIDEO_CALL if video else IMAGE_CALL), "num_inference_steps": steps,
            "guidance_scale": guidance}

    def latents() -> torch.Tensor:
        with torch.inference_mode():
            return pipe(PROMPTS[:1], generator=torch.Generator().manual_seed(5),
                        output_type="latent", **call)[0]

    return latents, call


def fast_family(preset: str = "w8a8", video: bool = False, **changes):
    """``fast`` at the tiny families' size, with 4 groups over 4 calibration steps."""
    base = {"calib_rows": 32, "calib_steps": 4, "num_groups": 4, "calib_height": 32,
            "calib_width": 32, "calib_num_frames": 5 if video else None}
    base.update(changes)
    return fast(preset, **base)


def capture_denoiser_calls(pipe, steps: int, guidance: float, **call) -> list[dict[str, Any]]:
    """The keyword arguments of every denoiser call of one pipeline run (tensors cloned)."""
    calls: list[dict[str, Any]] = []

    def record(_module, _args, kwargs):
        calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
             generator=torch.Generator().manual_seed(5), **call)
    finally:
        handle.remove()
    return calls


@torch.no_grad()
def denoiser_sqnrs(fp_pipe, q_pipe, calls, cfg_batch: bool) -> list[tuple[float, int, float]]:
    """(timestep as passed, group used, SQNR of the quantized output to FP in dB) per
    captured call, replayed on both denoisers. ``cfg_batch`` tells the quantized one the
    batch is [uncond, cond] (the pipeline call would have announced it)."""
    state = api.get_state(q_pipe)
    state.context.cfg_override = cfg_batch
    out = []
    try:
        for kwargs in calls:
            ref = fp_pipe.transformer(**kwargs)[0]
            got = q_pipe.transformer(**kwargs)[0]
            t = float(kwargs["timestep"].reshape(-1)[0])
            out.append((t, state.context.group, float(sqnr_db(ref, got))))
    finally:
        state.context.cfg_override = None
    return out


class ContextSpy:
    """Records (group, cfg_active, batch) each time a quantized layer runs."""

    def __init__(self, pipe, layer_name: str) -> None:
        self.state = api.get_state(pipe)
        self.seen: list[tuple[int, bool, int]] = []
        layer = pipe.transformer.get_submodule(layer_name)
        self.handle = layer.register_forward_pre_hook(self._record)

    def _record(self, _module, args) -> None:
        ctx = self.state.context
        self.seen.append((ctx.group, ctx.cfg_active, args[0].shape[0]))

    def remove(self) -> None:
        self.handle.remove()


def assert_groups_follow_timesteps(results, scale: float = 1.0, bound_db: float = 30.0) -> None:
    """Each replayed call (``denoiser_sqnrs``) ran the group of its timestep on the [0, 1000]
    training scale (the passed timestep x ``scale``) and stayed within ``bound_db`` of FP."""
    for t, group, sqnr in results:
        assert group == min(int(t * scale // 250), 3), results
        assert sqnr > bound_db, results


def spied_runs(pipe, layer_name: str, guidances, **call):
    """One 4-step latent run per guidance with a ``ContextSpy`` on ``layer_name``: each run's
    step trace, and every (group, cfg_active, batch) the spy saw."""
    spy = ContextSpy(pipe, layer_name)
    traces = []
    try:
        for guidance in guidances:
            pipe(PROMPTS, num_inference_steps=4, guidance_scale=guidance, output_type="latent",
                 **call)
            traces.append(api.step_trace(pipe))
    finally:
        spy.remove()
    return traces, spy.seen
