"""Where a pipeline call spends its time: text encoding, each denoiser step, decoding.

Forward hooks on the text encoder and the denoiser record wall time per forward (with
a device synchronise on CUDA so the times are real); decode time is what remains from
the last denoiser step to the end of the call. The server turns these into the
`trdq_stage_duration_seconds` and `trdq_denoise_step_seconds` metrics; the benchmark
uses them for the step-alone figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def _sync(module: torch.nn.Module) -> None:
    param = next(module.parameters(), None)
    if param is not None and param.device.type == "cuda":
        torch.cuda.synchronize(param.device)


def _timestep_value(args: tuple, kwargs: dict) -> float | None:
    timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if timestep is None:
        return None
    if torch.is_tensor(timestep):
        return float(timestep.reshape(-1)[0].item())
    return float(timestep)


@dataclass
class CallProfile:
    """Timings of one pipeline call."""

    started: float = 0.0
    text_encode_s: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    step_timesteps: list[float | None] = field(default_factory=list)
    denoise_end: float | None = None
    finished: float | None = None

    @property
    def denoise_s(self) -> float:
        return sum(self.step_seconds)

    @property
    def decode_s(self) -> float:
        if self.finished is None or self.denoise_end is None:
            return 0.0
        return max(0.0, self.finished - self.denoise_end)

    @property
    def total_s(self) -> float:
        return 0.0 if self.finished is None else self.finished - self.started


StepListener = Callable[[float, float | None], None]  # (seconds, timestep)


class PipelineProfiler:
    """Attach once to a pipeline; wrap each call in `with profiler.call() as profile:`."""

    def __init__(self, pipe) -> None:
        self._profile: CallProfile | None = None
        self._step_listeners: list[StepListener] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # Flux and SD3 run one or two CLIP encoders beside their T5: all count as text_encode
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                self._attach(encoder, self._text_start, self._text_end)
        self._attach(pipe.transformer, self._step_start, self._step_end)
        self._t_text = self._t_step = 0.0
        self._timestep: float | None = None

    def add_step_listener(self, listener: StepListener) -> None:
        self._step_listeners.append(listener)

    def _attach(self, module, pre, post) -> None:
        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def _text_start(self, module, args, kwargs):
        self._t_text = time.perf_counter()

    def _text_end(self, module, args, kwargs, output):
        if self._profile is not None:
            _sync(module)
            self._profile.text_encode_s += time.perf_counter() - self._t_text

    def _step_start(self, module, args, kwargs):
        _sync(module)
        self._timestep = _timestep_value(args, kwargs)
        self._t_step = time.perf_counter()

    def _step_end(self, module, args, kwargs, output):
        _sync(module)
        now = time.perf_counter()
        seconds = now - self._t_step
        if self._profile is not None:
            self._profile.step_seconds.append(seconds)
            self._profile.step_timesteps.append(self._timestep)
            self._profile.denoise_end = now
        for listener in self._step_listeners:
            listener(seconds, self._timestep)

    def call(self) -> _ProfiledCall:
        return _ProfiledCall(self)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _ProfiledCall:
    def __init__(self, profiler: PipelineProfiler) -> None:
        self._profiler = profiler

    def __enter__(self) -> CallProfile:
        profile = CallProfile(started=time.perf_counter())
        self._profiler._profile = profile
        return profile

    def __exit__(self, *exc) -> None:
        profile = self._profiler._profile
        if profile is not None:
            profile.finished = time.perf_counter()
        self._profiler._profile = None
