"""How ``trdq bench`` measures: one result record, the timers, and weight bytes.

Every row is timed and weighed by these same few functions, so its numbers compare with
the baselines': ``time_calls`` (wall time around ``fn()``, synchronized; the pipeline
scope), ``time_step`` (CUDA events on a GPU; the denoiser step), the peak memory over the
timed runs (``torch.cuda.max_memory_allocated``, or the process's max RSS on CPU), and
weight bytes counted by storage (``tensor_bytes``), not by the dtype a tensor presents.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from typing import Any

import torch

__all__ = [
    "COMPONENTS",
    "EXTRA_TEXT_ENCODERS",
    "BenchResult",
    "component_bytes",
    "module_bytes",
    "sync",
    "tensor_bytes",
    "time_calls",
    "time_step",
]

@dataclasses.dataclass
class BenchResult:
    name: str
    scope: str
    latency_s: float
    peak_memory_bytes: int
    weight_bytes: int
    batch: int = 1
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "latency_s": self.latency_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "weight_bytes": self.weight_bytes,
        }



def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes; tensor subclasses (torchao's quantized weights) are counted by their
    inner tensors, not by the logical (bf16) dtype they present."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(tensor_bytes(t) for t in list(module.parameters()) + list(module.buffers()))


#: components whose weights every row counts, and the extra text encoders FLUX and SD3
#: have (T5 sits in ``text_encoder_2`` / ``text_encoder_3`` there, beside CLIP)
COMPONENTS = ("text_encoder", "transformer", "vae")
EXTRA_TEXT_ENCODERS = ("text_encoder_2", "text_encoder_3")


def component_bytes(pipe) -> dict[str, int]:
    """Weight bytes per component (an extra text encoder only where the pipeline has one)."""
    present = [n for n in EXTRA_TEXT_ENCODERS if getattr(pipe, n, None) is not None]
    return {name: module_bytes(getattr(pipe, name, None)) for name in (*COMPONENTS, *present)}


def time_calls(fn, device: torch.device, warmup: int, runs: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` and the peak memory over the timed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    _reset_peak(device)
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _peak(device)


def time_step(fn, device: torch.device, warmup: int, runs: int) -> tuple[float, int]:
    if device.type != "cuda":
        return time_calls(fn, device, warmup, runs)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    _reset_peak(device)
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), _peak(device)
