"""Collection: the calibration prompts, and forward pre-hooks on the target linears that
keep, per (timestep group, CFG half), the statistics the search needs (``LayerStats``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trdq.config import TIMESTEP_SCALE, QuantConfig
from trdq.integrations.diffusers import rotation_block_for
from trdq.rotation import hadamard_transform
from trdq.timestep import QuantContext

__all__ = ["ROW_BINS", "TOP_ROWS_PER_OBSERVATION", "LayerStats", "StatsCollector", "load_prompts"]

#: the largest rows of every observation always enter the sample (they set the range)
TOP_ROWS_PER_OBSERVATION = 4
#: rows are sampled per uniform timestep bin (within each group), whatever the group count:
#: the integer weights are calibrated on every stored row, so a sample that grew with the
#: number of groups would make "+ groups" in the ablation a change of the weights' rows
ROW_BINS = 8


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
    elif isinstance(prompts, Path):
        raise FileNotFoundError(f"no calibration prompts file at {prompts}")
    else:
        out = [str(p) for p in prompts]
    if not out:
        raise ValueError("the calibration prompt list is empty")
    return out


class LayerStats:
    """Running statistics of one layer's inputs, per (group, half)."""

    def __init__(self, k: int, groups: int, block: int | None) -> None:
        self.block = block
        self.chan_absmax = torch.zeros(groups, 2, k)
        self.rot_absmax = torch.zeros(groups, 2)
        #: (group, timestep bin, width) -> row samples ``[r, width, K]``; width 2 = paired
        #: (uncond, cond) rows of the same token, width 1 = cond-only rows from calls
        #: without CFG; each bucket holds at most ``2 * calib_rows`` rows
        self.rows: dict[tuple[int, int, int], list[torch.Tensor]] = {}
        self.ema = torch.zeros(groups, k)
        self.ema_seen = [False] * groups

    def group_rows(self, g: int, width: int) -> list[torch.Tensor]:
        """Group ``g``'s row samples of one width, every timestep bin."""
        return [t for key in sorted(self.rows) if key[0] == g and key[2] == width
                for t in self.rows[key]]

    def all_rows(self) -> list[tuple[int, torch.Tensor]]:
        """Every row sample with its width, in (group, bin, width) order."""
        return [(key[2], t) for key in sorted(self.rows) for t in self.rows[key]]


class StatsCollector:
    """Forward pre-hooks on the target linears feeding ``LayerStats``."""

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
            name: LayerStats(
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
            self._observe_ema(st, g, x)
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
        assert absmax_rows is not None  # halves holds one or two entries
        self._sample_rows(st, g, halves, absmax_rows)

    def _observe_ema(self, st: LayerStats, g: int, x: torch.Tensor) -> None:
        """Faithful mode: the EMA of the mean over the batch of the per-sample max over
        tokens (the released code's act_absmax)."""
        x3 = x.detach().float().reshape(x.shape[0], -1, x.shape[-1])
        obs = x3.abs().amax(dim=1).mean(dim=0).cpu()
        m = self.config.ema_momentum
        st.ema[g] = obs if not st.ema_seen[g] else m * st.ema[g] + (1 - m) * obs
        st.ema_seen[g] = True

    def _sample_rows(self, st: LayerStats, g: int, halves: list[tuple[int, torch.Tensor]],
                     absmax_rows: torch.Tensor) -> None:
        """Store seeded random rows plus the largest ones; the same token rows from both
        halves, so the search can see paired errors."""
        n = halves[0][1].shape[0]
        pick = torch.randperm(n, generator=self.generator)[: self.rows_per_obs]
        top = torch.topk(absmax_rows, min(TOP_ROWS_PER_OBSERVATION, n)).indices.cpu()
        idx = torch.unique(torch.cat((pick, top))).to(halves[0][1].device)
        sample = torch.stack([xh[idx] for _, xh in halves], dim=1).cpu()
        timestep = self.context.timestep or 0.0
        time_bin = min(max(int(timestep * ROW_BINS / TIMESTEP_SCALE), 0), ROW_BINS - 1)
        bucket = st.rows.setdefault((g, time_bin, len(halves)), [])
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
