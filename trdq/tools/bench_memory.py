"""Device-memory accounting for ``trdq bench``: CUDA-graph pools, per-stage peaks and times.

``torch.cuda.max_memory_allocated`` counts the caching allocator's live blocks. Two things
it does not say, and why this module exists:

- A replayed CUDA graph writes its intermediates into its private pool without asking the
  allocator, so those bytes are never "allocated" during the timed runs although the
  device holds them for as long as the graphs live. ``graph_pool_idle_bytes`` counts
  them (the pool's segments minus its live tensors) so ``+cg`` rows are charged for them.
- A pipeline's peak is set by one stage (text encode, sampler loop or VAE decode), and
  which one decides what could lower it. ``StagePeaks`` records each stage's peak during
  one call, and its wall time (synchronized at each stage's edges): how much of a
  pipeline call the denoiser is, which bounds what quantizing it can gain.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; stubs ship with mypy

#: (pipeline attribute, stage name); the VAE stage is its ``decode`` method
#: (pipeline attribute, stage): every text encoder a pipeline has is "encode" (FLUX and SD3
#: keep T5 in ``text_encoder_2`` / ``text_encoder_3`` beside CLIP)
STAGES = (("text_encoder", "encode"), ("text_encoder_2", "encode"), ("text_encoder_3", "encode"),
          ("transformer", "denoise"), ("vae", "decode"))
DEFAULT_POOL = (0, 0)


def graph_pool_idle_bytes(snapshot: list[dict[str, Any]] | None = None) -> int:
    """Bytes held by private (CUDA-graph) pools beyond their live tensors.

    ``snapshot`` is ``torch.cuda.memory_snapshot()`` (taken here when not given); segments
    of the default pool ``(0, 0)`` belong to the ordinary allocator and are skipped.
    """
    if snapshot is None:
        snapshot = torch.cuda.memory_snapshot()
    idle = 0
    for segment in snapshot:
        if tuple(segment.get("segment_pool_id", DEFAULT_POOL)) == DEFAULT_POOL:
            continue
        idle += int(segment.get("total_size", 0)) - int(segment.get("allocated_size", 0))
    return idle


class StagePeaks:
    """Peak allocated bytes per pipeline stage while the ``with`` block runs (CUDA only).

    Each stage's start resets the device's peak counter and its end reads it, so a stage's
    number is the most memory alive at any moment inside it, weights of every resident
    component included. ``resident`` is what was allocated when the block began.
    """

    def __init__(self, pipe, device: torch.device) -> None:
        self.pipe, self.device = pipe, device
        self.peaks: dict[str, int] = {}
        #: seconds per stage, summed over its calls (the denoiser runs once a step)
        self.seconds: dict[str, float] = {}
        self._began = 0.0
        self.resident = 0
        self._handles: list[Any] = []
        self._patched_decode = False

    def _start(self, *_args, **_kwargs) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._began = time.perf_counter()

    def _end(self, stage: str) -> None:
        torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self._began
        self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
        peak = int(torch.cuda.max_memory_allocated(self.device))
        self.peaks[stage] = max(self.peaks.get(stage, 0), peak)

    def __enter__(self) -> Self:
        self.resident = int(torch.cuda.memory_allocated(self.device))
        hooked: set[int] = set()  # a module shared by two attributes is timed once
        for attr, stage in STAGES:
            module = getattr(self.pipe, attr, None)
            if module is None or id(module) in hooked:
                continue
            hooked.add(id(module))
            if attr == "vae":
                self._wrap_decode(module, stage)
                continue
            self._handles.append(module.register_forward_pre_hook(self._start))
            self._handles.append(
                module.register_forward_hook(lambda *_a, _stage=stage: self._end(_stage))
            )
        return self

    def _wrap_decode(self, vae, stage: str) -> None:
        decode = vae.decode

        def measured_decode(*args, **kwargs):
            self._start()
            try:
                return decode(*args, **kwargs)
            finally:
                self._end(stage)

        vae.decode = measured_decode  # instance attribute, removed on exit
        self._patched_decode = True

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._patched_decode:
            del self.pipe.vae.decode
            self._patched_decode = False

    def milliseconds(self) -> dict[str, float]:
        """Wall ms per stage during the block (stage edges synchronized, so the sum is a
        little above an unobserved call)."""
        return {stage: round(seconds * 1e3, 1) for stage, seconds in self.seconds.items()}

    def report(self, extra_bytes: int = 0) -> dict[str, float]:
        """GB per stage (plus ``extra_bytes``, e.g. idle graph-pool bytes), and resident."""
        out = {stage: round((peak + extra_bytes) / 1e9, 3) for stage, peak in self.peaks.items()}
        out["resident"] = round((self.resident + extra_bytes) / 1e9, 3)
        return out
