"""Timestep groups and the per-call step context.

The diffusers sampler passes ``timestep`` to the denoiser on every step. A forward
pre-hook (``TimestepHook``) reads it, maps it to a group with the config's boundaries on
the training scale [0, 1000], and writes the group into a ``QuantContext`` that every
quantized layer of that model reads. The context is a plain object owned by the quantized
model (no globals), so two quantized pipelines in one process never interfere.

CFG detection: the hook cannot tell from a tensor whether the batch is [uncond, cond].
The library therefore learns it from the pipeline call itself: ``integrations`` wraps
the pipeline's ``__call__`` and sets ``context.cfg_from_call`` from ``guidance_scale > 1``
(the condition every diffusers DiT pipeline uses to duplicate the batch). A caller that
drives the denoiser directly sets ``context.cfg_override`` (True/False); the hook also
refuses CFG for an odd batch (with a warning) since it cannot be [uncond, cond].
"""

from __future__ import annotations

import bisect
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["GroupMap", "QuantContext", "StepEvent", "TimestepHook", "copy_to_host_later",
           "timestep_value"]


@dataclass(frozen=True)
class GroupMap:
    """Interior boundaries (ascending) on [0, 1000] -> group index (0 = smallest t)."""

    boundaries: tuple[float, ...]

    @property
    def num_groups(self) -> int:
        return len(self.boundaries) + 1

    def group_of(self, t: float) -> int:
        return bisect.bisect_right(self.boundaries, float(t))


@dataclass
class QuantContext:
    """Shared, mutable state read by every quantized layer of one model."""

    num_groups: int = 1
    group: int = 0
    #: CFG as learnt from the current pipeline call (guidance_scale > 1)
    cfg_from_call: bool = False
    #: explicit override for callers that drive the denoiser directly
    cfg_override: bool | None = None
    #: resolved by the hook for the current forward: batch is [uncond x B, cond x B]
    cfg_active: bool = False
    #: faithful CFG split: "both", "uncond" or "cond" for the current half-call
    branch: str = "both"
    #: current timestep on the training scale (None before the first step)
    timestep: float | None = None
    #: the group as a 0-d int64 tensor on the model's device, updated in place, so
    #: layers index their scale tables without a host sync and a compiled graph does
    #: not specialise (and recompile) on the group number
    group_index: torch.Tensor | None = None

    def group_row(self, table: torch.Tensor) -> torch.Tensor:
        """``table [G, ...]``'s row for the current group. Read on the device (index_select
        with ``group_index``) where the table lives with it, so there is no host sync (CUDA
        graphs capture it) and torch.compile sees no Python value that changes with the
        group; else by the host's ``group`` (clamped to the table)."""
        gi = self.group_index
        if gi is not None and gi.device == table.device:
            return table.index_select(0, gi.reshape(1)).squeeze(0)
        return table[min(self.group, table.shape[0] - 1)]

    def set_group(self, group: int, device: torch.device | None = None) -> None:
        group = min(max(group, 0), self.num_groups - 1)
        self.group = group
        if device is None:
            return
        if self.group_index is None or self.group_index.device != device:
            # a normal tensor even when the first call runs under inference_mode: calls
            # under plain no_grad (diffusers' own) may update it in place afterwards
            with torch.inference_mode(False):
                self.group_index = torch.tensor(group, dtype=torch.long, device=device)
        else:
            self.group_index.fill_(group)


@dataclass(frozen=True)
class StepEvent:
    """What listeners receive after every denoiser forward."""

    step_index: int
    timestep: float
    group: int
    switched: bool
    seconds: float


def timestep_value(timestep: Any) -> float:
    """A single float from a number or a (per-sample) tensor; warns if samples differ."""
    if isinstance(timestep, torch.Tensor):
        flat = timestep.detach().reshape(-1)
        if flat.numel() == 0:
            raise ValueError("empty timestep tensor")
        first = flat[0]
        if flat.numel() > 1 and not bool((flat == first).all()):
            logger.warning("per-sample timesteps differ; using the first one for the group")
        return float(first)
    return float(timestep)


def _read_waits(timestep: Any) -> bool:
    """Whether reading ``timestep`` on the host waits for the device's queue (a CUDA
    tensor), which is what ``TimestepHook._forecast`` avoids."""
    return isinstance(timestep, torch.Tensor) and timestep.is_cuda


def copy_to_host_later(timestep: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """(event, copy): a float32 host copy of ``timestep`` that is valid once ``event``
    (None: at once) has completed; the copy waits its turn in the stream, the host not."""
    if not timestep.is_cuda:
        return None, timestep.detach().reshape(-1).float().clone()
    copy = torch.empty(timestep.numel(), dtype=torch.float32, pin_memory=True)
    copy.copy_(timestep.detach().reshape(-1), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return event, copy


@dataclass
class TimestepHook:
    """Pre/post forward hooks on a denoiser that set the group and time each step."""

    group_map: GroupMap
    context: QuantContext
    #: multiply the passed timestep by this to reach the [0, 1000] training scale
    timestep_multiplier: float = 1.0
    #: synchronize CUDA before timing (only when a timed listener listens)
    synchronize: bool = True
    trace: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    switches_total: int = 0
    _listeners: list[Callable[[StepEvent], None]] = field(default_factory=list)
    #: the listeners that read ``StepEvent.seconds`` (they cost two GPU syncs a step)
    _timed_listeners: list[Callable[[StepEvent], None]] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)
    _signature: inspect.Signature | None = None
    _t0: float = 0.0
    _step_index: int = 0
    _prev_group: int | None = None
    #: the current call's scheduler, whose timesteps tell the hook each step's value
    #: without reading the GPU tensor it is passed (``_forecast``); None: read it
    _scheduler: Any = None
    _forecast_values: list[float] | None = None
    #: the last forecast, checked against the passed timestep once its copy has landed
    _pending_check: tuple[Any, torch.Tensor, float] | None = None
    #: set after a forecast was wrong: this hook reads every timestep from then on
    forecast_failed: bool = False

    # ---- attachment ----------------------------------------------------------------
    def attach(self, module: torch.nn.Module) -> TimestepHook:
        if self._handles:
            raise RuntimeError("TimestepHook is already attached")
        self._signature = inspect.signature(module.forward)
        self._handles = [
            module.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            module.register_forward_hook(self._post_hook, with_kwargs=True),
        ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ---- listeners and trace ---------------------------------------------------------
    def add_listener(self, fn: Callable[[StepEvent], None], timed: bool = True) -> None:
        """``fn(event)`` runs after every denoiser forward (keep it cheap; never raise).
        ``timed=False``: ``fn`` does not read ``event.seconds``, so the hook need not
        synchronize CUDA around the step for it (host time only)."""
        self._listeners.append(fn)
        if timed:
            self._timed_listeners.append(fn)

    def remove_listener(self, fn: Callable[[StepEvent], None]) -> None:
        self._listeners.remove(fn)
        if fn in self._timed_listeners:
            self._timed_listeners.remove(fn)

    def begin_call(self, cfg_active: bool | None = None, scheduler: Any = None) -> None:
        """Start a new pipeline call: resets the trace and the step counter. ``scheduler``
        (the pipeline's) lets the hook forecast each step's timestep (``_forecast``)."""
        self.trace = []
        self.timesteps = []
        self.step_seconds = []
        self._step_index = 0
        self._prev_group = None
        self._scheduler, self._forecast_values, self._pending_check = scheduler, None, None
        if cfg_active is not None:
            self.context.cfg_from_call = cfg_active

    def end_call(self) -> None:
        self.context.cfg_from_call = False
        self._check_forecast()
        self._scheduler, self._forecast_values = None, None

    # ---- hooks -------------------------------------------------------------------------
    def _find_timestep(self, args: tuple, kwargs: dict) -> Any:
        if "timestep" in kwargs:
            return kwargs["timestep"]
        assert self._signature is not None
        params = list(self._signature.parameters)
        if "timestep" in params:
            idx = params.index("timestep")
            if idx < len(args):
                return args[idx]
        raise ValueError("denoiser forward called without a timestep argument")

    def _batch_size(self, args: tuple, kwargs: dict) -> int | None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        return hidden.shape[0] if isinstance(hidden, torch.Tensor) else None

    # ---- forecasting the timestep -----------------------------------------------------
    def _forecast(self, passed: Any) -> float | None:
        """This step's timestep (training scale) without reading ``passed`` on the host.

        Why: reading a CUDA timestep waits for everything queued before it, the previous
        step included, so the GPU idles while the host prepares the next step (with CUDA
        graphs, ~0.4 ms a PixArt-1024 step). diffusers' samplers pass
        ``scheduler.timesteps[scheduler.step_index]`` (rescaled by the family's
        multiplier), so the hook reads the scheduler's timesteps once per call, at the
        first step (checked there against the passed value, synchronously), and indexes
        them after. Each later forecast is checked one step late, when its copy of the
        passed value has landed; a wrong one is logged and turns forecasting off for this
        hook. The group comes from the scheduler's exact value, not the passed one (which
        a family may round to bf16). None: read the passed value (a CPU timestep, no
        scheduler, no step index).
        """
        if self._scheduler is None or not _read_waits(passed):
            return None
        self._check_forecast()
        index = getattr(self._scheduler, "step_index", None)
        timesteps = getattr(self._scheduler, "timesteps", None)
        if (self.forecast_failed or not isinstance(timesteps, torch.Tensor)
                or not hasattr(self._scheduler, "step_index")):
            return None
        index = 0 if index is None else int(index)
        if self._forecast_values is None:  # the call's first step: read and compare
            self._forecast_values = [float(v) for v in timesteps.detach().float().cpu()]
            actual = timestep_value(passed) * self.timestep_multiplier
            self._compare_forecast(self._value_at(index), actual)
            return actual
        forecast = self._value_at(index)
        if forecast is None:
            return None
        self._pending_check = (*copy_to_host_later(passed), forecast)
        return forecast

    def _value_at(self, index: int) -> float | None:
        values = self._forecast_values or []
        return values[index] if 0 <= index < len(values) else None

    def _check_forecast(self) -> None:
        """Compare the last forecast with the passed value, now that its copy has landed
        (waiting only for that point of the stream, a step ago)."""
        if self._pending_check is None:
            return
        event, copy, forecast = self._pending_check
        self._pending_check = None
        if event is not None:
            event.synchronize()
        values = copy * self.timestep_multiplier
        if bool((values != values[0]).any()):
            logger.warning("per-sample timesteps differ; using the first one for the group")
        self._compare_forecast(forecast, float(values[0]))

    def _compare_forecast(self, forecast: float | None, actual: float) -> None:
        # the passed value may be rounded (FLUX passes bf16(t) / 1000): a bf16 step apart
        if forecast is None or abs(forecast - actual) > abs(actual) / 128 + 0.5:
            if not self.forecast_failed:
                logger.warning(
                    "the scheduler's timestep %s is not the denoiser's %.4f: reading the "
                    "timestep on the host from now on (one GPU sync a step)", forecast, actual)
            self.forecast_failed = True

    def _pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        passed = self._find_timestep(args, kwargs)
        t = self._forecast(passed)
        if t is None:
            t = timestep_value(passed) * self.timestep_multiplier
        ctx = self.context
        ctx.timestep = t
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        device = hidden.device if isinstance(hidden, torch.Tensor) else None
        ctx.set_group(self.group_map.group_of(t), device)
        cfg = ctx.cfg_override if ctx.cfg_override is not None else ctx.cfg_from_call
        batch = self._batch_size(args, kwargs)
        if cfg and batch is not None and batch % 2:
            logger.warning("CFG announced but batch %d is odd; using cond parameters", batch)
            cfg = False
        ctx.cfg_active = bool(cfg)
        if self._timed_listeners and self.synchronize and torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def _post_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._timed_listeners and self.synchronize and torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._t0
        group = self.context.group
        switched = self._prev_group is not None and group != self._prev_group
        if switched:
            self.switches_total += 1
        event = StepEvent(
            step_index=self._step_index,
            timestep=float(self.context.timestep or 0.0),
            group=group,
            switched=switched,
            seconds=seconds,
        )
        self.trace.append(group)
        self.timesteps.append(event.timestep)
        self.step_seconds.append(seconds)
        self._prev_group = group
        self._step_index += 1
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:  # a metrics listener must never break generation
                logger.exception("step listener %r failed", fn)
