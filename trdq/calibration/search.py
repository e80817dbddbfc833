"""TR-DQ's per-layer solve: the smoothing exponent (over all groups), the integer weights
(clip per output channel, GPTQ rounding) and, per timestep group and CFG half, the
activation clip ratio minimising the layer's output error on that group's stored rows.

The error is measured on at most ``SEARCH_MAX_OUTPUTS`` randomly chosen output channels
(an unbiased estimate of the full output MSE at a fraction of the cost) and on the stored
rows; all clip candidates are evaluated in one batched GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trdq import primitives as P
from trdq.calibration.collect import LayerStats
from trdq.config import QuantConfig
from trdq.gptq import gptq_round
from trdq.low_rank import effective_weight, fit_low_rank
from trdq.quant_transforms import (
    LayerQuantParams,
    quantize_transformed_weight,
    smooth_and_rotate,
    transform_weight,
)

__all__ = ["SEARCH_MAX_OUTPUTS", "solve_layer"]

#: output channels used to estimate a layer's output error during the search
SEARCH_MAX_OUTPUTS = 128


def solve_layer(linear: nn.Linear, st: LayerStats, config: QuantConfig,
                generator: torch.Generator | None = None) -> LayerQuantParams:
    """Per-group (per-half) activation parameters for one layer, after its smoothing
    divisor and integer weights (which every group shares)."""
    weight = linear.weight.detach().float().cpu()
    grid = torch.tensor(config.clip_grid if config.search else [1.0])
    n_out = weight.shape[0]
    out_idx = (torch.randperm(n_out, generator=generator)[:SEARCH_MAX_OUTPUTS]
               if n_out > SEARCH_MAX_OUTPUTS else slice(None))
    smooth = _search_smoothing(weight, st, config, out_idx) if config.smoothing else None
    weight_clip, weight_q = None, None
    if config.weight_clip_search or config.weight_rounding == "gptq":
        every = center_rows(_weight_rows(st, config), config)
        weight_clip, weight_q = _calibrate_weights(weight, every, smooth, st.block,
                                                   config, linear.weight.device)
    w_fake = _weight_fake(weight, smooth, st.block, config, weight_clip, weight_q)[out_idx]
    search = _ActSearch(st, config, smooth, weight[out_idx], w_fake, grid)

    groups = config.num_groups
    scales = torch.ones(groups, 2)
    clips = torch.ones(groups, 2)
    seen = torch.zeros(groups, 2, dtype=torch.bool)
    for g in range(groups):
        for half, (clip, scale) in search.solve_group(g).items():
            clips[g, half] = clip
            scales[g, half] = scale
            seen[g, half] = True
    params = LayerQuantParams(
        rotation_block=st.block,
        smooth_divisor=smooth,
        act_scale_by_group=_fill_unseen(scales, seen),
        clip_ratio_by_group=_fill_unseen(clips, seen),
        weight_clip=weight_clip,
        weight_q=weight_q,
    )
    if config.low_rank:
        _fit_error_branch(params, weight, st, config, linear.weight.device)
    return params


# ---- the rows a search sees ------------------------------------------------------------


def center_rows(rows: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """What the layer quantizes: rows minus their own mean when act_center is on."""
    return rows - rows.mean(dim=-1, keepdim=True) if config.act_center else rows


def rotate_rows(rows: torch.Tensor, block: int | None, smooth: torch.Tensor | None) -> torch.Tensor:
    """Rows as the layer's kernel quantizes them: smoothed, then block-rotated."""
    return smooth_and_rotate(rows, smooth, block)


def _spread(rows: torch.Tensor, cap: int) -> torch.Tensor:
    """At most ``cap`` rows, evenly strided over all of them (so over every timestep bin
    they came from; a head slice would keep the first bins only)."""
    if rows.shape[0] <= cap:
        return rows
    return rows[torch.linspace(0, rows.shape[0] - 1, cap).round().long()]


def _group_rows(st: LayerStats, g: int, half: int | None, config: QuantConfig) -> torch.Tensor | None:
    """Group ``g``'s stored rows of one CFG half (0 uncond, 1 cond, None both pooled);
    rows from calls without CFG count as cond rows."""
    paired = st.group_rows(g, 2)
    single = st.group_rows(g, 1)
    if half is None:
        parts = [t.flatten(0, 1) for t in paired] + [t[:, 0] for t in single]
    elif half == 0:
        parts = [t[:, 0] for t in paired]
    else:
        parts = [t[:, 1] for t in paired] + [t[:, 0] for t in single]
    return center_rows(_spread(torch.cat(parts), 2 * config.calib_rows), config) if parts else None


def _group_pairs(st: LayerStats, g: int, config: QuantConfig) -> torch.Tensor | None:
    """Group ``g``'s paired (uncond, cond) rows ``[r, 2, K]``, if any call had CFG."""
    paired = st.group_rows(g, 2)
    return center_rows(_spread(torch.cat(paired), config.calib_rows), config) if paired else None


def _weight_rows(st: LayerStats, config: QuantConfig) -> torch.Tensor:
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
    for width, t in st.all_rows():
        if width == 2 and config.cfg_wise:
            parts += [t[:, 0] + w * (t[:, 1] - t[:, 0]), t[:, 1]]
        else:
            parts.append(t.flatten(0, 1))
    return torch.cat(parts)


# ---- weights ---------------------------------------------------------------------------


def _weight_fake(weight: torch.Tensor, smooth: torch.Tensor | None, block: int | None,
                 config: QuantConfig, clip: torch.Tensor | None = None,
                 weight_q: torch.Tensor | None = None) -> torch.Tensor:
    """The dequantized weight QuantLinear would serve (same two functions), float32."""
    q, scale = quantize_transformed_weight(transform_weight(weight, smooth, block),
                                           config.weight_bits, config.fp8, clip, weight_q)
    return q.float() * scale[:, None]


def _search_smoothing(weight: torch.Tensor, st: LayerStats, config: QuantConfig,
                      out_idx: torch.Tensor | slice) -> torch.Tensor:
    """The smoothing divisor ``absmax_x^a / absmax_w^(1-a)`` whose exponent ``a`` (from
    ``alpha_grid``, or ``smoothing_alpha`` without search) gives the lowest output error
    with per-token scales, on every stored row pooled (one divisor serves all groups)."""
    chan = st.chan_absmax.amax(dim=(0, 1)).clamp_min(1e-5)
    w_abs = weight.abs().amax(dim=0).clamp_min(1e-5)
    alphas = config.alpha_grid if config.search else [config.smoothing_alpha]
    pooled = torch.cat([t.flatten(0, 1) for _, t in st.all_rows()])
    pooled = center_rows(_spread(pooled, 2 * config.calib_rows), config)
    y_pool = pooled @ weight[out_idx].t()
    tried = []
    for a in alphas:
        s = (chan.pow(a) / w_abs.pow(1 - a)).clamp_min(1e-5)
        xr = rotate_rows(pooled, st.block, s)
        row_scale = P.dynamic_row_scale(xr, config.act_bits, fp8=config.fp8)
        w_fake = _weight_fake(weight, s, st.block, config)[out_idx]
        tried.append((float(_grid_errors(xr, y_pool, w_fake, row_scale[None], config)[0]), s))
    return min(tried, key=lambda err_divisor: err_divisor[0])[1]  # the first of equals


def _calibrate_weights(weight: torch.Tensor, rows: torch.Tensor, smooth: torch.Tensor | None,
                       block: int | None, config: QuantConfig,
                       device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(per-channel clip, GPTQ integers) from ``H = X^T X`` of ``rows`` (centred; every
    stored row of every group and half: the weights serve them all). O(N K^2) per layer,
    so it runs on ``device`` (the layer's: a GPU for PixArt); results on the host."""
    smooth_dev = None if smooth is None else smooth.to(device)
    x = rotate_rows(rows.to(device), block, smooth_dev)
    hessian = x.t() @ x / x.shape[0]
    w_t = transform_weight(weight.to(device), smooth_dev, block)
    clip = P.output_weight_clip(w_t, hessian, config.weight_bits) if config.weight_clip_search else None
    weight_q = None
    if config.weight_rounding == "gptq":
        _, scale = P.quantize_weight_per_channel(w_t, config.weight_bits, clip=clip)
        weight_q = gptq_round(w_t, hessian, scale, config.weight_bits).cpu()
    return (None if clip is None else clip.cpu()), weight_q


def _fit_error_branch(params: LayerQuantParams, weight: torch.Tensor, st: LayerStats,
                      config: QuantConfig, device: torch.device) -> None:
    """The low-rank branch of the integer weight's error (trdq/low_rank.py), in
    ``params``. Fitted on the rows the integer weights were calibrated on (raw inputs: the
    branch sees the row before centring and rotation)."""
    q, scale = quantize_transformed_weight(
        transform_weight(weight, params.smooth_divisor, st.block), config.weight_bits,
        config.fp8, params.weight_clip, params.weight_q)
    served = effective_weight(q.to(device), scale.to(device), params.smooth_divisor, st.block)
    error = weight.to(device) - served
    rows = _weight_rows(st, config).to(device)
    up, down = fit_low_rank(error, rows.t() @ rows / rows.shape[0], config.low_rank)
    params.low_rank_up, params.low_rank_down = up.cpu(), down.cpu()


# ---- activation errors -----------------------------------------------------------------


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


# ---- the per-group activation search ---------------------------------------------------


@dataclass
class _ActSearch:
    """What one layer's per-group activation search holds fixed: its statistics, the
    chosen smoothing divisor, the sampled output channels of the original weight
    (``weight_sub``) and of the weight as served (``w_fake``), and the clip candidates."""

    st: LayerStats
    config: QuantConfig
    smooth: torch.Tensor | None
    weight_sub: torch.Tensor
    w_fake: torch.Tensor
    grid: torch.Tensor

    @property
    def qtop(self) -> float:
        """The largest quantized magnitude: e4m3's max, or the integer grid's."""
        return P.FP8_E4M3_MAX if self.config.fp8 else float(P.qmax_for(self.config.act_bits))

    @property
    def static(self) -> bool:
        return self.config.act_mode == "static"

    def rotate(self, rows: torch.Tensor) -> torch.Tensor:
        return rotate_rows(rows, self.st.block, self.smooth)

    def range_of(self, g: int, cols: list[int], x_rot: torch.Tensor) -> float:
        """Exact range of the (rotated) activations where it was tracked."""
        if self.smooth is not None:
            return float(x_rot.abs().max())
        if self.st.block is not None:
            return float(self.st.rot_absmax[g, cols].max())
        return float(self.st.chan_absmax[g, cols].max())

    def base_scales(self, x_rot: torch.Tensor, absmax: float) -> torch.Tensor:
        """Per-row scales at clip 1: the static range's, or each row's own (dynamic)."""
        if self.static:
            return torch.full((x_rot.shape[0],), max(absmax / self.qtop, P.MIN_SCALE))
        return P.dynamic_row_scale(x_rot, self.config.act_bits, fp8=self.config.fp8)

    def solve_group(self, g: int) -> dict[int, tuple[float, float]]:
        """Group ``g``'s ``{half: (clip, scale)}`` for the halves it has rows of: CFG-wise
        from paired rows where there are any and a grid to search, else per half."""
        config = self.config
        pairs = _group_pairs(self.st, g, config) if config.cfg_wise and len(self.grid) > 1 else None
        if pairs is not None:
            (clip_u, clip_c), (scale_u, scale_c) = self.search_cfg_pair(g, pairs)
            return {0: (clip_u, scale_u), 1: (clip_c, scale_c)}
        solved: dict[int, tuple[float, float]] = {}
        for half in ((0, 1) if config.cfg_wise else (None,)):
            rows = _group_rows(self.st, g, half, config)
            if rows is None:
                continue
            cols: list[int] = [0, 1] if half is None else [half]
            x_rot = self.rotate(rows)
            absmax = self.range_of(g, cols, x_rot)
            base = self.base_scales(x_rot, absmax)
            if len(self.grid) > 1:
                y_ref = rows @ self.weight_sub.t()
                cand = (self.grid[:, None] * base[None, :]).clamp_min(P.MIN_SCALE)
                best_i = int(torch.argmin(_grid_errors(x_rot, y_ref, self.w_fake, cand, config)))
            else:
                best_i = 0
            clip = float(self.grid[best_i])
            for c in cols:
                solved[c] = (clip, max(clip * absmax / self.qtop, P.MIN_SCALE))
        return solved

    def search_cfg_pair(self, g: int, pairs: torch.Tensor):
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
        config, grid, w_fake, qtop = self.config, self.grid, self.w_fake, self.qtop
        w = float(config.calib_guidance_scale)
        xu, xc = pairs[:, 0], pairs[:, 1]
        xu_r, xc_r = self.rotate(xu), self.rotate(xc)
        yu, yc = xu @ self.weight_sub.t(), xc @ self.weight_sub.t()
        a_u, a_c = self.range_of(g, [0], xu_r), self.range_of(g, [1], xc_r)
        rows = xu.shape[0]

        cand_u = (grid[:, None] * self.base_scales(xu_r, a_u)[None]).clamp_min(P.MIN_SCALE)
        du = _residuals(xu_r, yu, w_fake, cand_u, config)
        # the second column's rows: the cond rows, or with cfg_delta the differences they are
        # served as (e_c = e_u + e_d). Either way guided = g_u e_u + g_2 e_2, cond = c_u e_u + c_2 e_2
        if config.cfg_delta:
            x2_r, y2 = xc_r - xu_r, yc - yu
            (g_u, g_2), (c_u, c_2) = (1.0, w), (1.0, 1.0)
        else:
            x2_r, y2 = xc_r, yc
            (g_u, g_2), (c_u, c_2) = (1 - w, w), (0.0, 1.0)
        cand_2 = (grid[:, None] * self.base_scales(x2_r, a_c)[None]).clamp_min(P.MIN_SCALE)
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
        if self.static:  # one scale for both halves: errors stay correlated and cancel
            shared = (grid[:, None] * max(max(a_u, a_c) / qtop, P.MIN_SCALE)).expand(-1, rows)
            su = _residuals(xu_r, yu, w_fake, shared, config)
            sc = _residuals(xc_r, yc, w_fake, shared, config)
            tot_s = ((1 - w) * su + w * sc).pow(2).mean(1) + sc.pow(2).mean(1)
            k = int(torch.argmin(tot_s))
            if float(tot_s[k]) < best[0]:
                scale = max(float(grid[k]) * max(a_u, a_c) / qtop, P.MIN_SCALE)
                clip_u = scale * qtop / a_u if a_u > 0 else 1.0
                clip_c = scale * qtop / a_c if a_c > 0 else 1.0
                best = (float(tot_s[k]), (clip_u, clip_c), (scale, scale))
        return best[1], best[2]
