"""Where a pipeline call spends its time: text encoding, each denoiser step, decoding.

Forward hooks on the text encoders and the denoiser mark the start and end of each
forward; decode time is what remains from the last denoiser step to the end of the call.
The server turns these into the `trdq_stage_duration_seconds` and
`trdq_denoise_step_seconds` metrics.

On CUDA a mark is an event recorded on the module's stream, read when the call ends: the
hooks never wait for the GPU. (They used to synchronise before and after every step, so
the GPU idled each step while the host launched the sampler's kernels and the next
step.) The passed timestep is copied to the host the same way. On the CPU a mark is the
host clock. Steps that run outside a profiled call are timed and reported at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trdq.runtime.compile import TEXT_ENCODERS
from trdq.timestep import copy_to_host_later


def _device_of(module: torch.nn.Module) -> torch.device | None:
    param = next(module.parameters(), None)
    return None if param is None else param.device


def _mark(module: torch.nn.Module) -> Any:
    """Now, as seen by ``module``'s device: a CUDA event recorded on its current stream
    (timestamped when the GPU gets there), else the host clock."""
    device = _device_of(module)
    if device is not None and device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return event
    return time.perf_counter()


def _seconds(start: Any, end: Any) -> float:
    """Seconds between two marks of one device (waits for ``end`` to be reached)."""
    if isinstance(start, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _passed_timestep(args: tuple, kwargs: dict) -> Any:
    """The denoiser's timestep as a float, or a host copy of a tensor one that is valid
    once the step's end mark is reached (no wait here); None when there is none."""
    timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if timestep is None:
        return None
    if not torch.is_tensor(timestep):
        return float(timestep)
    return copy_to_host_later(timestep)[1]


def _timestep_value(passed: Any) -> float | None:
    """The first sample's timestep (read after the step's end mark was waited for)."""
    return float(passed[0]) if torch.is_tensor(passed) else passed


@dataclass
class CallProfile:
    """Timings of one pipeline call (complete once the call has returned)."""

    started: float = 0.0
    text_encode_s: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    step_timesteps: list[float | None] = field(default_factory=list)
    decode_s: float = 0.0
    finished: float | None = None

    @property
    def denoise_s(self) -> float:
        return sum(self.step_seconds)

    @property
    def total_s(self) -> float:
        return 0.0 if self.finished is None else self.finished - self.started


StepListener = Callable[[float, float | None], None]  # (seconds, timestep)


@dataclass
class _Marks:
    """What the hooks recorded during one call, read when it ends."""

    text: list[tuple[Any, Any]] = field(default_factory=list)
    steps: list[tuple[Any, Any, Any]] = field(default_factory=list)  # start, end, timestep


class PipelineProfiler:
    """Attach once to a pipeline; wrap each call in `with profiler.call() as profile:`."""

    def __init__(self, pipe) -> None:
        self._profile: CallProfile | None = None
        self._marks = _Marks()
        self._step_listeners: list[StepListener] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._transformer = pipe.transformer
        # Flux and SD3 run one or two CLIP encoders beside their T5: all count as text_encode
        for name in TEXT_ENCODERS:
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                self._attach(encoder, self._text_start, self._text_end)
        self._attach(pipe.transformer, self._step_start, self._step_end)
        self._text_started: Any = None
        self._step_started: tuple[Any, Any] | None = None

    def add_step_listener(self, listener: StepListener) -> None:
        self._step_listeners.append(listener)

    def _attach(self, module, pre, post) -> None:
        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def _text_start(self, module, args, kwargs):
        self._text_started = _mark(module)

    def _text_end(self, module, args, kwargs, output):
        if self._profile is not None and self._text_started is not None:
            self._marks.text.append((self._text_started, _mark(module)))

    def _step_start(self, module, args, kwargs):
        self._step_started = (_mark(module), _passed_timestep(args, kwargs))

    def _step_end(self, module, args, kwargs, output):
        if self._step_started is None:
            return
        start, timestep = self._step_started
        self._step_started = None
        step = (start, _mark(module), timestep)
        if self._profile is not None:
            self._marks.steps.append(step)
        else:  # outside a profiled call: nothing will read it later
            self._report_step(*step)

    def _report_step(self, start: Any, end: Any, passed: Any) -> tuple[float, float | None]:
        seconds, timestep = _seconds(start, end), _timestep_value(passed)
        for listener in self._step_listeners:
            listener(seconds, timestep)
        return seconds, timestep

    def _finish(self, profile: CallProfile) -> None:
        """Read the call's marks into ``profile`` and tell the step listeners."""
        marks, self._marks = self._marks, _Marks()
        self._step_started = self._text_started = None
        profile.text_encode_s = sum(_seconds(a, b) for a, b in marks.text)
        for step in marks.steps:
            seconds, timestep = self._report_step(*step)
            profile.step_seconds.append(seconds)
            profile.step_timesteps.append(timestep)
        if marks.steps:
            profile.decode_s = max(0.0, _seconds(marks.steps[-1][1], _mark(self._transformer)))
        profile.finished = time.perf_counter()

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

    def __exit__(self, exc_type, *exc) -> None:
        """Reads the marks of a call that returned; a failed call's are dropped (reading
        them could raise again, over the call's own error)."""
        profile = self._profiler._profile
        self._profiler._profile = None
        if profile is None:
            return
        if exc_type is None:
            self._profiler._finish(profile)
        else:
            self._profiler._marks = _Marks()
            profile.finished = time.perf_counter()
