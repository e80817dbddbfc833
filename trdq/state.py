"""What ``trdq.quantize`` leaves behind: the report it returns and the state it attaches to
the quantized denoiser (``get_state``), with the step-trace helpers that read it.

Split from ``trdq.api`` so that the orchestration there stays one screenful per verb;
``trdq.api`` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from trdq.calibration import CalibrationResult
from trdq.config import QuantConfig
from trdq.integrations.diffusers import CfgSplitForward, find_denoiser
from trdq.kernels.base import KernelBackend
from trdq.pipeline import weight_bytes
from trdq.timestep import QuantContext, StepEvent, TimestepHook

__all__ = [
    "STATE_ATTR",
    "QuantReport",
    "QuantState",
    "add_step_listener",
    "get_state",
    "step_trace",
    "weight_bytes_by_dtype",
]

#: the denoiser attribute that holds its ``QuantState``
STATE_ATTR = "_trdq_state"


@dataclass
class QuantReport:
    config_name: str
    backend: str | None
    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: conditioning layers given weight-only integer weights (``embedder_weight_bits``)
    weight_only: list[str] = field(default_factory=list)
    bytes_before: dict[str, int] = field(default_factory=dict)
    bytes_after: dict[str, int] = field(default_factory=dict)
    calibration_id: str | None = None
    cache: list[str] = field(default_factory=list)
    cache_reason: str = ""
    calibration_seconds: float = 0.0
    total_seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_bytes_before(self) -> int:
        return sum(self.bytes_before.values())

    @property
    def weight_bytes_after(self) -> int:
        return sum(self.bytes_after.values())

    def describe(self) -> str:
        """A short human-readable summary (for the CLI and logs)."""
        before, after = self.weight_bytes_before, self.weight_bytes_after
        ratio = before / after if after else float("nan")
        lines = [
            (f"quant {self.config_name} on backend {self.backend}: "
             f"{len(self.replaced)} layers replaced, {len(self.weight_only)} weight-only, "
             f"{len(self.skipped)} kept in full precision"),
            f"denoiser weights {before:,} -> {after:,} bytes ({ratio:.2f}x smaller)",
            (f"calibration {self.calibration_id} cache {','.join(self.cache) or '-'} "
             f"({self.calibration_seconds:.1f} s calibrating, {self.total_seconds:.1f} s total)"),
        ]
        if self.cache_reason:
            lines.append(f"cache: {self.cache_reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["weight_bytes_before"] = self.weight_bytes_before
        out["weight_bytes_after"] = self.weight_bytes_after
        return out


@dataclass
class QuantState:
    """Everything the library attached to one quantized denoiser."""

    config: QuantConfig
    context: QuantContext
    hook: TimestepHook
    backend: KernelBackend
    layers: dict[str, nn.Module]
    calibration: CalibrationResult
    report: QuantReport
    cfg_split: CfgSplitForward | None = None
    #: ``trdq.cache.model_fingerprint`` of the float denoiser it was quantized from
    model_fingerprint: str = ""
    #: attention modules whose heads ``trdq.nn.padded_heads`` padded in the weights after
    #: quantizing (a run-time layout: ``save`` refuses such a denoiser)
    padded_heads: int = 0


def weight_bytes_by_dtype(module: nn.Module) -> dict[str, int]:
    """Bytes of parameters + persistent buffers by dtype name (one definition: the
    server's weight-bytes metric uses the same function)."""
    return weight_bytes(module)


def get_state(pipe: Any) -> QuantState | None:
    return getattr(find_denoiser(pipe), STATE_ATTR, None)


def add_step_listener(pipe: Any, fn: Callable[[StepEvent], None],
                      timed: bool = True) -> TimestepHook:
    """Attach ``fn(StepEvent)`` to a quantized pipeline's timestep hook (``timed=False``
    when ``fn`` does not read ``event.seconds``: no GPU sync around each step for it)."""
    state = get_state(pipe)
    if state is None:
        raise ValueError("pipeline is not quantized (call trdq.quantize first)")
    state.hook.add_listener(fn, timed=timed)
    return state.hook


def step_trace(pipe: Any) -> list[int]:
    """Group used by each denoiser step of the last pipeline call (debug API)."""
    state = get_state(pipe)
    return list(state.hook.trace) if state is not None else []
