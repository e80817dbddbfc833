"""Static FP8 attention: Q/K/V e4m3 statistics calibrated per timestep group and CFG half.

Why: ``fa3_fp8_attention`` quantizes Q, K and V with their own statistics (K's and V's
means over the tokens, the absmaxes per batch and head), reductions that read the
projection's output once more before the casts read it again: on an H100 ~1 ms of a
PixArt-1024 step, and at Latte-512's 1024-token frames more than FP8 attention saves
(``FP8_MIN_TOKENS``). Fixed statistics leave only the casts after the projection
(Inductor's three elementwise kernels, or one Triton launch: ``fa3.set_triton_cast``).
H100 step, against dynamic statistics: FLUX.1-dev 95.9 -> 91.9 ms, PixArt-1024 27.5 ->
26.7 ms (docs/KERNELS.md).

They are TR-DQ's time dimension applied to attention, as the linears' activation scales:
one set per timestep group and CFG half, recorded on calibration runs
(``calibrate_static_attention``) and picked on the device by the context's group tensor (no
host sync: CUDA graphs capture it).

Exactness: subtracting any constant vector from K adds the same value to every logit of a
query row, which softmax ignores; a constant subtracted from V comes back exactly as
``P (V - m) + m``. So the calibrated means are exact whatever the input; only the
absmaxes bound the values, and a value beyond its calibrated absmax (times ``MARGIN``) is
clamped to e4m3's largest. The centred absmax is bounded from the per-channel extremes
seen in calibration around the *calibrated* mean, so every calibration input fits.

``StaticFp8Attention`` is the kernel one attention module runs (``[B, S, H, D]`` in and
out); its statistics are plain tensors (the module's state dict is unchanged).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import torch

from trdq.kernels import fa3_attention as fa3
from trdq.nn.attention import FP8_MIN_TOKENS, install_attention_kernels, set_attention_backend
from trdq.timestep import QuantContext

logger = logging.getLogger(__name__)

__all__ = [
    "MARGIN",
    "STATIC_MIN_TOKENS",
    "AttentionRecorder",
    "StaticFp8Attention",
    "calibrate_static_attention",
]

#: calibrated absmaxes are widened by this factor: e4m3's precision is relative (3 mantissa
#: bits at every magnitude), so headroom costs nothing but the subnormal range's floor
#: (values below 2^-6 of the scale), and it keeps inputs slightly beyond calibration exact
MARGIN = 2.0
#: sequences shorter than this take SDPA (cuDNN bf16), as with ``fp8-long``: the e4m3 casts
#: left after the statistics pass is gone still cost more than the kernel saves at Latte-512's
#: 1024-token frames (H100 step: 137.1 ms against 132.2 with SDPA there; the three cast
#: kernels ~3 ms a step each, far from the memory bandwidth;
#: docs/bench/latte-512-16f-fusedqkv-h100.json), let alone its 16-frame temporal attention
STATIC_MIN_TOKENS = FP8_MIN_TOKENS
#: index of the CFG half in the statistics: uncond rows first, cond rows second (a batch
#: without CFG takes the cond values)
UNCOND, COND = 0, 1

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _halves(batch: int, cfg_active: bool) -> list[tuple[int, slice]]:
    """(half index, batch rows) pairs: with CFG the first half of the batch is uncond."""
    if cfg_active and batch % 2 == 0:
        return [(UNCOND, slice(0, batch // 2)), (COND, slice(batch // 2, batch))]
    return [(COND, slice(0, batch))]


@dataclasses.dataclass
class _Extremes:
    """Running per-channel extremes and sum of token means of one tensor, ``[H, D]``."""

    lo: torch.Tensor
    hi: torch.Tensor
    mean_sum: torch.Tensor
    count: int = 0

    @classmethod
    def of(cls, x: torch.Tensor) -> _Extremes:  # x: [B, S, H, D]
        xf = x.float()
        return cls(xf.amin(dim=(0, 1)), xf.amax(dim=(0, 1)), xf.mean(dim=1).sum(0), x.shape[0])

    def add(self, other: _Extremes) -> None:
        self.lo = torch.minimum(self.lo, other.lo)
        self.hi = torch.maximum(self.hi, other.hi)
        self.mean_sum = self.mean_sum + other.mean_sum
        self.count += other.count

    def mean(self) -> torch.Tensor:
        return self.mean_sum / max(self.count, 1)


class AttentionRecorder:
    """A kernel that runs ``inner`` and records the statistics of its inputs by the
    context's current timestep group and CFG half (calibration only: it reads the group
    on the host)."""

    def __init__(self, inner: AttentionKernel, context: QuantContext):
        self.inner, self.context = inner, context
        #: (group, half) -> {"q" | "k" | "v": _Extremes}
        self.seen: dict[tuple[int, int], dict[str, _Extremes]] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for half, rows in _halves(q.shape[0], self.context.cfg_active):
                key = (self.context.group, half)
                new = {"q": _Extremes.of(q[rows]), "k": _Extremes.of(k[rows]),
                       "v": _Extremes.of(v[rows])}
                if key not in self.seen:
                    self.seen[key] = new
                else:
                    for name, extremes in new.items():
                        self.seen[key][name].add(extremes)
        return self.inner(q, k, v)

    def freeze(self, num_groups: int, margin: float = MARGIN,
               kernel: Callable[..., torch.Tensor] | None = None) -> StaticFp8Attention:
        """The static kernel of what was recorded (``kernel``: see ``StaticFp8Attention``).
        A (group, half) never seen takes the nearest recorded group's values of the same
        half (or of the other half)."""
        if not self.seen:
            raise RuntimeError("no attention call was recorded: run the pipeline first")
        any_stats = next(iter(self.seen.values()))
        heads, dim = any_stats["q"].lo.shape
        device = any_stats["q"].lo.device
        amax = torch.zeros(num_groups, 2, 3, heads, device=device)
        means = torch.zeros(num_groups, 2, 2, heads, dim, device=device)
        for group in range(num_groups):
            for half in (UNCOND, COND):
                stats = self.seen[_nearest(self.seen, group, half)]
                q, k, v = stats["q"], stats["k"], stats["v"]
                amax[group, half, 0] = torch.maximum(q.hi.abs(), q.lo.abs()).amax(-1)
                for i, x in enumerate((k, v)):
                    m = x.mean()
                    means[group, half, i] = m
                    amax[group, half, 1 + i] = torch.maximum(x.hi - m, m - x.lo).amax(-1)
        return StaticFp8Attention(amax * margin, means, self.context, kernel)


def _nearest(seen: Mapping[tuple[int, int], object], group: int, half: int) -> tuple[int, int]:
    """The recorded (group, half) standing in for ``(group, half)``: the nearest group of
    the same half (the lower on a tie), else of the other half."""
    same_half = [g for g, h in seen if h == half]
    pool = same_half or [g for g, _ in seen]
    best = min(pool, key=lambda g: (abs(g - group), g))
    return (best, half) if (best, half) in seen else (best, 1 - half)


class StaticFp8Attention:
    """FA3 e4m3 attention (or ``kernel``: the oracle on the CPU) quantized with calibrated
    statistics: ``amax [G, 2, 3, H]`` (Q, K - k_mean, V - v_mean per group and CFG half)
    and ``means [G, 2, 2, H, D]`` (K's and V's)."""

    def __init__(self, amax: torch.Tensor, means: torch.Tensor, context: QuantContext,
                 kernel: Callable[..., torch.Tensor] | None = None):
        self.amax, self.means, self.context = amax.float(), means.float(), context
        self.kernel = kernel

    def stats(self, batch: int) -> fa3.AttentionInputStats:
        """This group's statistics, one row per batch entry (``[B, H]``, ``[B, 1, H, D]``)."""
        ctx = self.context
        amax, means = ctx.group_row(self.amax), ctx.group_row(self.means)  # [2, ...] each
        if ctx.cfg_active and batch % 2 == 0:  # as QuantLinear._per_row: uncond rows first
            amax, means = (t.repeat_interleave(batch // 2, dim=0) for t in (amax, means))
        else:
            amax, means = (t[COND:].expand(batch, *t.shape[1:]) for t in (amax, means))
        # amax [B, 3, H], means [B, 2, H, D]
        return fa3.AttentionInputStats(
            amax[:, 0], amax[:, 1], amax[:, 2], means[:, 0, None], means[:, 1, None]
        )

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[1] < STATIC_MIN_TOKENS:  # static shapes: settled once per compiled graph
            return fa3.sdpa_attention(q, k, v)
        stats = self.stats(q.shape[0])
        if self.kernel is not None:
            return self.kernel(q, k, v, stats=stats).to(q.dtype)
        return fa3.fa3_fp8_attention(q, k, v, stats)


def calibrate_static_attention(
    transformer: torch.nn.Module, run: Callable[[], object], context: QuantContext,
    kernel: Callable[..., torch.Tensor] | None = None,
) -> dict[str, StaticFp8Attention]:
    """Record the self-attention inputs of ``transformer``'s eligible modules over ``run()``
    (calibration pipeline calls; SDPA computes the attention meanwhile), then give each
    module its static FP8 kernel (``kernel``: FA3 where None, e.g. the oracle on a CPU).
    Returns the kernels by module name."""
    recorders: dict[str, AttentionRecorder] = {}

    def recorder_for(name: str) -> AttentionRecorder:
        recorders[name] = AttentionRecorder(fa3.sdpa_attention, context)
        return recorders[name]

    install_attention_kernels(transformer, recorder_for, "fp8-static-calibration")
    try:
        with torch.no_grad():
            run()
    finally:
        set_attention_backend(transformer, "sdpa")
    kernels = {name: recorder.freeze(context.num_groups, kernel=kernel)
               for name, recorder in recorders.items()}
    install_attention_kernels(transformer, kernels.__getitem__, "fp8-static")
    logger.info("static FP8 attention on %d modules (%d groups)", len(kernels),
                context.num_groups)
    return kernels
