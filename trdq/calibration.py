"""Calibration: activation statistics over prompts x the sampler's real timesteps, then a
per-layer, per-group (per CFG half) search of the activation parameters.

Collection runs the full-precision pipeline (``output_type="latent"``, no VAE) with the
config's step count and guidance, so the timesteps are exactly the sampler's. A pre-hook
on every target linear records, per (timestep group, CFG half):

- the per-channel absmax of the raw input (smoothing statistics; exact min-max range
  without rotation),
- the absmax of the rotated input (exact static range with rotation),
- a bounded, seeded sample of input rows (random rows plus the largest ones), used by
  the search, and for ``faithful`` the EMA of mean_batch(max_tokens |X|) per range.

Integer weights can be calibrated first, on ``H = X^T X`` of all stored rows (with
CFG-wise parameters, of the guided rows the sampler's output sees): with
``weight_clip_search`` each output channel's clip is chosen by the output error its
rounding causes (``P.output_weight_clip``), with ``weight_rounding="gptq"`` the integers
are rounded to compensate each other's error (trdq/gptq.py). The activation search then
picks, per group and half, the clip ratio (from ``clip_grid``) minimising the
layer's output MSE ``|Q(x) Q(W)^T - x W^T|^2`` on that group's rows. The smoothing
exponent is searched per layer over all groups: the weights are stored once, so a
per-group exponent would need per-group weight copies (TRDQ.md: not the default).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from trdq import primitives as P
from trdq.config import QuantConfig
from trdq.gptq import gptq_round
from trdq.integrations.diffusers import (
    find_denoiser,
    rotation_block_for,
    select_layers,
    unwrap_pipeline_call,
    wrap_pipeline_call,
)
from trdq.integrations.pipeline_args import calibration_call_kwargs
from trdq.kernels.base import ActQuant
from trdq.kernels.reference import prepare_activation
from trdq.nn.quant_linear import LayerQuantParams, quantize_transformed_weight, transform_weight
from trdq.rotation import DuQuantRotation, hadamard_block_size, hadamard_transform
from trdq.timestep import GroupMap, QuantContext, TimestepHook

logger = logging.getLogger(__name__)

__all__ = ["CalibrationResult", "FaithfulParams", "calibrate_pipeline", "load_prompts"]

TOP_ROWS_PER_OBSERVATION = 4
#: output channels used to estimate a layer's output error during the search
SEARCH_MAX_OUTPUTS = 128


def load_prompts(prompts: list[str] | str | Path | None, fallback: list[str] | None = None) -> list[str]:
    """A list of prompts, or a text file with one prompt per line (``#`` comments)."""
    if prompts is None:
        if not fallback:
            raise ValueError("no calibration prompts given and none shipped for this model")
        return list(fallback)
    if isinstance(prompts, (str, Path)) and Path(prompts).is_file():
        lines = Path(prompts).read_text(encoding="utf-8").splitlines()
        out = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    elif isinstance(prompts, str):
        out = [prompts]
    else:
        out = [str(p) for p in prompts]
    if not out:
        raise ValueError("the calibration prompt list is empty")
    return out


@dataclass
class FaithfulParams:
    smooth_by_range: torch.Tensor  # [R, K]
    rotations: list[DuQuantRotation] | None


@dataclass
class CalibrationResult:
    params: dict[str, LayerQuantParams] = field(default_factory=dict)
    faithful: dict[str, FaithfulParams] = field(default_factory=dict)
    seconds: float = 0.0
    timesteps: list[float] = field(default_factory=list)
    groups_seen: list[int] = field(default_factory=list)

    # ---- (de)serialisation to flat safetensors dicts -----------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            out[f"{name}/rotation_block"] = torch.tensor(p.rotation_block or 0, dtype=torch.int64)
            out[f"{name}/act_scale_by_group"] = p.act_scale_by_group.float().cpu().contiguous()
            out[f"{name}/clip_ratio_by_group"] = p.clip_ratio_by_group.float().cpu().contiguous()
            if p.smooth_divisor is not None:
                out[f"{name}/smooth_divisor"] = p.smooth_divisor.float().cpu().contiguous()
            if p.weight_clip is not None:
                out[f"{name}/weight_clip"] = p.weight_clip.float().cpu().contiguous()
            if p.weight_q is not None:
                out[f"{name}/weight_q"] = _store_int(p.weight_q)
        for name, f in self.faithful.items():
            out[f"{name}/smooth_by_range"] = f.smooth_by_range.float().cpu().contiguous()
            if f.rotations is not None:
                out[f"{name}/r0"] = torch.stack([r.r0 for r in f.rotations]).contiguous()
                out[f"{name}/perm"] = torch.stack([r.perm for r in f.rotations]).contiguous()
                out[f"{name}/r1"] = torch.stack([r.r1 for r in f.rotations]).contiguous()
        return out

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], layer_names: list[str], faithful: bool,
        weight_clip: bool = False, weight_q: bool = False,
    ) -> CalibrationResult:
        """Rebuild from ``to_tensors`` output; raises KeyError naming a missing tensor
        (``weight_clip`` / ``weight_q``: the config calibrated them, so every layer must
        have one)."""
        result = cls()
        for name in layer_names:
            if faithful:
                rots = None
                if f"{name}/r0" in tensors:
                    r0, perm, r1 = (tensors[f"{name}/{k}"] for k in ("r0", "perm", "r1"))
                    rots = [DuQuantRotation(r0[i], perm[i], r1[i]) for i in range(r0.shape[0])]
                result.faithful[name] = FaithfulParams(tensors[f"{name}/smooth_by_range"], rots)
            else:
                block = int(tensors[f"{name}/rotation_block"])
                result.params[name] = LayerQuantParams(
                    rotation_block=block or None,
                    smooth_divisor=tensors.get(f"{name}/smooth_divisor"),
                    act_scale_by_group=tensors[f"{name}/act_scale_by_group"],
                    clip_ratio_by_group=tensors[f"{name}/clip_ratio_by_group"],
                    weight_clip=tensors[f"{name}/weight_clip"] if weight_clip else None,
                    weight_q=_load_int(tensors[f"{name}/weight_q"]) if weight_q else None,
                )
        return result


def _store_int(q: torch.Tensor) -> torch.Tensor:
    """Integer weights for the artifact: packed two per byte (uint8) when they fit 4 bits."""
    q = q.cpu().to(torch.int8)
    if q.shape[-1] % 2 == 0 and (q.numel() == 0 or (q.min() >= -8 and q.max() <= 7)):
        return P.pack_int4(q).contiguous()
    return q.contiguous()


def _load_int(stored: torch.Tensor) -> torch.Tensor:
    return P.unpack_int4(stored) if stored.dtype == torch.uint8 else stored.to(torch.int8)


class _LayerStats:
    """Running statistics of one layer's inputs, per (group, half)."""

    def __init__(self, k: int, groups: int, block: int | None) -> None:
        self.block = block
        self.chan_absmax = torch.zeros(groups, 2, k)
        self.rot_absmax = torch.zeros(groups, 2)
        #: (group, width) -> row samples ``[r, width, K]``; width 2 = paired (uncond, cond)
        #: rows of the same token, width 1 = cond-only rows from calls without CFG
        self.rows: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.ema = torch.zeros(groups, k)
        self.ema_seen = [False] * groups


class StatsCollector:
    """Forward pre-hooks on the target linears feeding ``_LayerStats``."""

    def __init__(
        self,
        targets: dict[str, nn.Linear],
        config: QuantConfig,
        context: QuantContext,
        seed: int,
    ) -> None:
        self.config = config
        self.context = context
        self.generator = torch.Generator().manual_seed(seed)
        self.rows_per_obs = max(8, config.calib_rows // 8)
        self.stats = {
            name: _LayerStats(
                lin.in_features, config.num_groups, rotation_block_for(lin.in_features, config)
            )
            for name, lin in targets.items()
        }
        self.targets = targets
        self._handles: list[Any] = []

    def attach(self) -> StatsCollector:
        for name, lin in self.targets.items():
            self._handles.append(lin.register_forward_pre_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.observe(name, args[0])

        return hook

    @torch.no_grad()
    def observe(self, name: str, x: torch.Tensor) -> None:
        st = self.stats[name]
        g = self.context.group
        if self.config.faithful:
            # mean over batch of the per-sample max over tokens (released act_absmax)
            x3 = x.detach().float().reshape(x.shape[0], -1, x.shape[-1])
            obs = x3.abs().amax(dim=1).mean(dim=0).cpu()
            m = self.config.ema_momentum
            st.ema[g] = obs if not st.ema_seen[g] else m * st.ema[g] + (1 - m) * obs
            st.ema_seen[g] = True
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        m_rows = x2.shape[0]
        if self.context.cfg_active and m_rows % 2 == 0:
            halves = [(0, x2[: m_rows // 2]), (1, x2[m_rows // 2 :])]
        else:
            halves = [(1, x2)]
        absmax_rows = None
        for h, xh in halves:
            # aminmax avoids materialising |x| (calibration is memory-bound)
            lo, hi = torch.aminmax(xh, dim=1)
            row_max = torch.maximum(-lo, hi)
            absmax_rows = row_max if absmax_rows is None else torch.maximum(absmax_rows, row_max)
            lo, hi = torch.aminmax(xh, dim=0)
            st.chan_absmax[g, h] = torch.maximum(st.chan_absmax[g, h], torch.maximum(-lo, hi).cpu())
            if st.block is not None:
                lo, hi = torch.aminmax(hadamard_transform(xh, st.block))
                rot_max = max(-float(lo), float(hi))
                st.rot_absmax[g, h] = max(float(st.rot_absmax[g, h]), rot_max)
        # the same token rows from both halves, so the search can see paired errors
        n = halves[0][1].shape[0]
        pick = torch.randperm(n, generator=self.generator)[: self.rows_per_obs]
        top = torch.topk(absmax_rows, min(TOP_ROWS_PER_OBSERVATION, n)).indices.cpu()
        idx = torch.unique(torch.cat((pick, top))).to(x2.device)
        sample = torch.stack([xh[idx] for _, xh in halves], dim=1).cpu()
        bucket = st.rows.setdefault((g, len(halves)), [])
        bucket.append(sample)
        if sum(t.shape[0] for t in bucket) > 2 * self.config.calib_rows:
            bucket[:] = [self._compact(torch.cat(bucket))]

    def _compact(self, rows: torch.Tensor) -> torch.Tensor:
        """Keep the largest rows (they set the range) plus a seeded random remainder."""
        keep = self.config.calib_rows
        order = torch.argsort(rows.abs().amax(dim=(1, 2)), descending=True)
        n_top = min(keep // 8, rows.shape[0])
        rest = order[n_top:][torch.randperm(len(order) - n_top, generator=self.generator)]
        return rows[torch.cat((order[:n_top], rest[: keep - n_top]))]


# ---- the search ------------------------------------------------------------------------


def _weight_fake(weight: torch.Tensor, smooth: torch.Tensor | None, block: int | None,
                 config: QuantConfig, clip: torch.Tensor | None = None,
                 weight_q: torch.Tensor | None = None) -> torch.Tensor:
    """The dequantized weight QuantLinear would serve (same two functions), float32."""
    q, scale = quantize_transformed_weight(transform_weight(weight, smooth, block),
                                           config.weight_bits, config.fp8, clip, weight_q)
    return q.float() * scale[:, None]


def _calibrate_weights(weight: torch.Tensor, rows: torch.Tensor, rotate,
                       smooth: torch.Tensor | None, block: int | None, config: QuantConfig,
                       device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(per-channel clip, GPTQ integers) from ``H = X^T X`` of ``rows`` (centred; every
    stored row of every group and half: the weights serve them all). O(N K^2) per layer,
    so it runs on ``device`` (the layer's: a GPU for PixArt); results on the host."""
    smooth_dev = None if smooth is None else smooth.to(device)
    x = rotate(rows.to(device), smooth_dev)
    hessian = x.t() @ x / x.shape[0]
    w_t = transform_weight(weight.to(device), smooth_dev, block)
    clip = P.output_weight_clip(w_t, hessian, config.weight_bits) if config.weight_clip_search else None
    weight_q = None
    if config.weight_rounding == "gptq":
        _, scale = P.quantize_weight_per_channel(w_t, config.weight_bits, clip=clip)
        weight_q = gptq_round(w_t, hessian, scale, config.weight_bits).cpu()
    return (None if clip is None else clip.cpu()), weight_q


def _residuals(x_rot: torch.Tensor, y_ref: torch.Tensor, w_fake: torch.Tensor,
               scales: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Output error for each candidate per-row scale set ``scales [C, R]`` -> ``[C, R*n]``."""
    xq = x_rot[None] / scales[:, :, None]
    if config.fp8:
        xq = xq.clamp(-P.FP8_E4M3_MAX, P.FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()
    else:
        q = P.qmax_for(config.act_bits)
        xq = torch.clamp(torch.round(xq), -q, q)
    xq = xq * scales[:, :, None]
    out = xq.reshape(-1, x_rot.shape[1]) @ w_fake.t()
    return out.reshape(scales.shape[0], -1) - y_ref.reshape(1, -1)


def _grid_errors(x_rot: torch.Tensor, y_ref: torch.Tensor, w_fake: torch.Tensor,
                 scales: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Output MSE for each candidate per-row scale set: ``scales`` is ``[C, R]``."""
    return _residuals(x_rot, y_ref, w_fake, scales, config).pow(2).mean(dim=1)


def _fill_unseen(values: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Copy each unseen (group, half) from the nearest seen group (cond half first)."""
    out = values.clone()
    seen_groups = [g for g in range(values.shape[0]) if seen[g].any()]
    if not seen_groups:
        return out
    for g in range(values.shape[0]):
        for h in (1, 0):
            if seen[g, h]:
                continue
            if seen[g, 1 - h]:
                out[g, h] = out[g, 1 - h]
                continue
            near = min(seen_groups, key=lambda s: (abs(s - g), s))
            src = 1 if seen[near, 1] else 0
            out[g, h] = values[near, src]
    return out


def _search_cfg_pair(pairs, rotate, range_of, weight_sub, w_fake, grid, config):
    """CFG-aware search of (uncond, cond) parameters for one group.

    The sampler combines the halves as ``eps_u + w (eps_c - eps_u)``; with w = 4.5 an
    error that differs between the halves is amplified ~(2w - 1)x, while a shared error
    largely cancels. So the objective is the error of the *guided* output plus the cond
    error (which is what serves without CFG), evaluated on paired token rows, over
    separate clip pairs (c_u, c_c) and, in static mode, shared scales. The separable
    form |(1-w) d_u + w d_c|^2 = (1-w)^2 |d_u|^2 + w^2 |d_c|^2 + 2 w (1-w) <d_u, d_c>
    makes the C x C grid cost 2C GEMMs. With ``cfg_delta`` the cond column is the clip of
    the delta rows (``x_c - x_u``), and the errors are those of the served sums.
    Returns ((clip_u, clip_c), (scale_u, scale_c)).
    """
    w = float(config.calib_guidance_scale)
    static = config.act_mode == "static"
    qtop = P.FP8_E4M3_MAX if config.fp8 else float(P.qmax_for(config.act_bits))
    xu, xc = pairs[:, 0], pairs[:, 1]
    xu_r, xc_r = rotate(xu), rotate(xc)
    yu, yc = xu @ weight_sub.t(), xc @ weight_sub.t()
    a_u, a_c = range_of(0, xu_r), range_of(1, xc_r)
    rows = xu.shape[0]

    def base(x_r: torch.Tensor, absmax: float) -> torch.Tensor:
        if static:
            return torch.full((rows,), max(absmax / qtop, P.MIN_SCALE))
        return P.dynamic_row_scale(x_r, config.act_bits, fp8=config.fp8)

    cand_u = (grid[:, None] * base(xu_r, a_u)[None]).clamp_min(P.MIN_SCALE)
    du = _residuals(xu_r, yu, w_fake, cand_u, config)
    # the second column's rows: the cond rows, or with cfg_delta the differences they are
    # served as (e_c = e_u + e_d). Either way guided = g_u e_u + g_2 e_2, cond = c_u e_u + c_2 e_2
    if config.cfg_delta:
        x2_r, y2 = xc_r - xu_r, yc - yu
        (g_u, g_2), (c_u, c_2) = (1.0, w), (1.0, 1.0)
    else:
        x2_r, y2 = xc_r, yc
        (g_u, g_2), (c_u, c_2) = (1 - w, w), (0.0, 1.0)
    cand_2 = (grid[:, None] * base(x2_r, a_c)[None]).clamp_min(P.MIN_SCALE)
    d2 = _residuals(x2_r, y2, w_fake, cand_2, config)
    nu, n2 = du.pow(2).mean(1), d2.pow(2).mean(1)
    cross = du @ d2.t() / du.shape[1]
    total = ((g_u**2 + c_u**2) * nu[:, None] + (g_2**2 + c_2**2) * n2[None, :]
             + 2 * (g_u * g_2 + c_u * c_2) * cross)
    flat = int(torch.argmin(total))
    i, j = divmod(flat, total.shape[1])
    best = (float(total[i, j]), (float(grid[i]), float(grid[j])),
            (max(float(grid[i]) * a_u / qtop, P.MIN_SCALE),
             max(float(grid[j]) * a_c / qtop, P.MIN_SCALE)))
    if static:  # one scale for both halves: errors stay correlated and cancel
        shared = (grid[:, None] * max(max(a_u, a_c) / qtop, P.MIN_SCALE)).expand(-1, rows)
        su = _residuals(xu_r, yu, w_fake, shared, config)
        sc = _residuals(xc_r, yc, w_fake, shared, config)
        tot_s = ((1 - w) * su + w * sc).pow(2).mean(1) + sc.pow(2).mean(1)
        k = int(torch.argmin(tot_s))
        if float(tot_s[k]) < best[0]:
            scale = max(float(grid[k]) * max(a_u, a_c) / qtop, P.MIN_SCALE)
            c_u = scale * qtop / a_u if a_u > 0 else 1.0
            c_c = scale * qtop / a_c if a_c > 0 else 1.0
            best = (float(tot_s[k]), (c_u, c_c), (scale, scale))
    return best[1], best[2]


def _weight_rows(st: _LayerStats, config: QuantConfig) -> torch.Tensor:
    """The rows whose ``H = X^T X`` the integer weights are calibrated on.

    Every stored row of every group and half; with CFG-wise parameters the paired rows
    enter as what the sampler's output sees instead: the guided row ``x_u + w (x_c - x_u)``
    (a weight error e = dW x reaches the output as ``e_u + w (e_c - e_u) = dW x_g``) and
    the cond row (what serves without CFG). The guided rows weigh the directions in which
    the halves differ (w - 1)^2 ~ 12x more (t2v zoo W4A8, 16 training prompts, CPU:
    31.5 -> 32.4 dB to FP).
    """
    parts = []
    w = float(config.calib_guidance_scale)
    for (_, width), tensors in st.rows.items():
        for t in tensors:
            if width == 2 and config.cfg_wise:
                parts += [t[:, 0] + w * (t[:, 1] - t[:, 0]), t[:, 1]]
            else:
                parts.append(t.flatten(0, 1))
    return torch.cat(parts)


def solve_layer(linear: nn.Linear, st: _LayerStats, config: QuantConfig,
                generator: torch.Generator | None = None) -> LayerQuantParams:
    """Per-group (per-half) activation parameters for one layer.

    The error is measured on at most ``SEARCH_MAX_OUTPUTS`` randomly chosen output
    channels (an unbiased estimate of the full output MSE at a fraction of the cost) and
    on the stored rows; all clip candidates are evaluated in one batched GEMM.
    """
    groups = config.num_groups
    weight = linear.weight.detach().float().cpu()
    qtop = P.FP8_E4M3_MAX if config.fp8 else float(P.qmax_for(config.act_bits))
    static = config.act_mode == "static"
    halves = (0, 1) if config.cfg_wise else (None,)
    grid = torch.tensor(config.clip_grid if config.search else [1.0])
    n_out = weight.shape[0]
    out_idx = (torch.randperm(n_out, generator=generator)[:SEARCH_MAX_OUTPUTS]
               if n_out > SEARCH_MAX_OUTPUTS else slice(None))

    def centered(rows: torch.Tensor) -> torch.Tensor:
        """What the layer quantizes: rows minus their own mean when act_center is on."""
        return rows - rows.mean(dim=-1, keepdim=True) if config.act_center else rows

    def rows_for(g: int, h: int | None) -> torch.Tensor | None:
        paired = st.rows.get((g, 2), [])
        single = st.rows.get((g, 1), [])
        if h is None:  # both halves pooled
            parts = [t.flatten(0, 1) for t in paired] + [t[:, 0] for t in single]
        elif h == 0:
            parts = [t[:, 0] for t in paired]
        else:
            parts = [t[:, 1] for t in paired] + [t[:, 0] for t in single]
        return centered(torch.cat(parts)[: 2 * config.calib_rows]) if parts else None

    def pairs_for(g: int) -> torch.Tensor | None:
        paired = st.rows.get((g, 2), [])
        return centered(torch.cat(paired)[: config.calib_rows]) if paired else None

    def rotate(rows: torch.Tensor, smooth: torch.Tensor | None) -> torch.Tensor:
        return prepare_activation(rows, ActQuant(rotation_block=st.block, smooth_divisor=smooth))

    smooth = None
    if config.smoothing:
        chan = st.chan_absmax.amax(dim=(0, 1)).clamp_min(1e-5)
        w_abs = weight.abs().amax(dim=0).clamp_min(1e-5)
        alphas = config.alpha_grid if config.search else [config.smoothing_alpha]
        pooled = torch.cat([t.flatten(0, 1) for v in st.rows.values() for t in v])
        pooled = centered(pooled[: 2 * config.calib_rows])
        y_pool = pooled @ weight[out_idx].t()
        best = None
        for a in alphas:
            s = (chan.pow(a) / w_abs.pow(1 - a)).clamp_min(1e-5)
            xr = rotate(pooled, s)
            row_scale = P.dynamic_row_scale(xr, config.act_bits, fp8=config.fp8)
            w_fake = _weight_fake(weight, s, st.block, config)[out_idx]
            err = float(_grid_errors(xr, y_pool, w_fake, row_scale[None], config)[0])
            if best is None or err < best[0]:
                best = (err, s)
        smooth = best[1]
    weight_clip, weight_q = None, None
    if config.weight_clip_search or config.weight_rounding == "gptq":
        every = centered(_weight_rows(st, config))
        weight_clip, weight_q = _calibrate_weights(weight, every, rotate, smooth, st.block,
                                                   config, linear.weight.device)
    w_fake = _weight_fake(weight, smooth, st.block, config, weight_clip, weight_q)[out_idx]

    scales = torch.ones(groups, 2)
    clips = torch.ones(groups, 2)
    seen = torch.zeros(groups, 2, dtype=torch.bool)
    def range_of(g: int, cols: list[int], x_rot: torch.Tensor) -> float:
        """Exact range of the (rotated) activations where it was tracked."""
        if smooth is not None:
            return float(x_rot.abs().max())
        if st.block is not None:
            return float(st.rot_absmax[g, cols].max())
        return float(st.chan_absmax[g, cols].max())

    for g in range(groups):
        pairs = pairs_for(g) if config.cfg_wise and len(grid) > 1 else None
        if pairs is not None:
            clip_pair, scale_pair = _search_cfg_pair(
                pairs, lambda r: rotate(r, smooth), lambda h, xr, g=g: range_of(g, [h], xr),
                weight[out_idx], w_fake,
                grid, config,
            )
            clips[g] = torch.tensor(clip_pair)
            scales[g] = torch.tensor(scale_pair)
            seen[g] = True
            continue
        for h in halves:
            rows = rows_for(g, h)
            if rows is None:
                continue
            cols = [0, 1] if h is None else [h]
            x_rot = rotate(rows, smooth)
            absmax = range_of(g, cols, x_rot)
            if static:
                base = torch.full((rows.shape[0],), max(absmax / qtop, P.MIN_SCALE))
            else:
                base = P.dynamic_row_scale(x_rot, config.act_bits, fp8=config.fp8)
            if len(grid) > 1:
                y_ref = rows @ weight[out_idx].t()
                cand = (grid[:, None] * base[None, :]).clamp_min(P.MIN_SCALE)
                best_i = int(torch.argmin(_grid_errors(x_rot, y_ref, w_fake, cand, config)))
            else:
                best_i = 0
            clip = float(grid[best_i])
            for c in cols:
                clips[g, c] = clip
                scales[g, c] = max(clip * absmax / qtop, P.MIN_SCALE)
                seen[g, c] = True
    return LayerQuantParams(
        rotation_block=st.block,
        smooth_divisor=smooth,
        act_scale_by_group=_fill_unseen(scales, seen),
        clip_ratio_by_group=_fill_unseen(clips, seen),
        weight_clip=weight_clip,
        weight_q=weight_q,
    )


def solve_faithful(linear: nn.Linear, st: _LayerStats, config: QuantConfig,
                   generator: torch.Generator) -> FaithfulParams:
    k = linear.in_features
    w_abs = linear.weight.detach().float().abs().amax(dim=0).cpu().clamp_min(1e-5)
    seen = [g for g in range(config.num_groups) if st.ema_seen[g]]
    a = config.smoothing_alpha
    smooth = torch.ones(config.num_groups, k)
    rotations = []
    block = hadamard_block_size(k, config.rotation_block_size)
    for g in range(config.num_groups):
        src = g if st.ema_seen[g] else min(seen, key=lambda s: (abs(s - g), s)) if seen else None
        absmax = st.ema[src] if src is not None else torch.ones(k)
        absmax = torch.where(absmax == 0, torch.full_like(absmax, 1e-5), absmax)
        if config.smoothing:
            smooth[g] = (absmax.pow(a) / w_abs.pow(1 - a)).clamp_min(1e-5)
        rotations.append(DuQuantRotation.fit(absmax / smooth[g], block, generator))
    return FaithfulParams(smooth, rotations if block >= 8 else None)


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
    gen = torch.Generator().manual_seed(seed)
    for name in tqdm(sorted(targets), desc="trdq search", disable=not progress):
        st = collector.stats[name]
        if config.faithful:
            result.faithful[name] = solve_faithful(targets[name], st, config, gen)
        else:
            result.params[name] = solve_layer(targets[name], st, config, gen)
    result.seconds = time.perf_counter() - start
    logger.info("calibrated %d layers on %d prompts in %.1f s (groups seen %s)",
                len(targets), len(prompts), result.seconds, result.groups_seen)
    return result
