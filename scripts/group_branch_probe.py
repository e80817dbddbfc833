"""CPU probe: would per-timestep-group low-rank branches make the time dimension pay?

Why: issue #25 asks per-group parameters to beat one-group calibration at W4. The
served 4-bit layers add a rank-16 branch fitted to the integer weight's error on every
group's rows (trdq/low_rank.py). This fits, for each layer of a zoo model as the W4
preset calibrates it, and measures the output error ``||(E - branch) x||^2`` on held-out
rows of each timestep group (every other stored row fits, the rest test):

- ``s16``: the shared rank-16 branch (what ships);
- ``s48``: one shared rank-48 branch (the bytes of ``s16+g4``);
- ``s16+g4``: ``s16`` plus a rank-4 branch per group, fitted to what ``s16`` leaves on
  that group's rows (group-selected at run time, like the clip ratios);
- ``g16``: a rank-16 branch per group on its own rows (8x the bytes of ``s16``).

Printed as fractions of the error without a branch, over all layers and per group.
Usage: ``python scripts/group_branch_probe.py tiny-shapes-t2i w4a8``.
"""

from __future__ import annotations

import sys

import torch

from trdq import api
from trdq.calibration import search
from trdq.low_rank import effective_weight, fit_low_rank
from trdq.pipeline import load_pipeline
from trdq.quant_transforms import quantize_transformed_weight, transform_weight

KINDS = ("base", "s16", "s48", "s16+g4", "g16")


def group_rows(st, g: int, config) -> torch.Tensor | None:
    """Group ``g``'s rows as the branch is fitted on them (guided and cond rows of CFG
    pairs, as ``search._weight_rows``)."""
    parts = []
    w = float(config.calib_guidance_scale)
    for key in sorted(st.rows):
        if key[0] != g:
            continue
        for t in st.rows[key]:
            if key[2] == 2 and config.cfg_wise:
                parts += [t[:, 0] + w * (t[:, 1] - t[:, 0]), t[:, 1]]
            else:
                parts.append(t.flatten(0, 1))
    return torch.cat(parts).double() if parts else None


def main(model: str, preset: str) -> None:
    errors: dict[int, dict[str, float]] = {}
    fit_branch = search._fit_error_branch

    def probe(params, weight, st, config, device):
        fit_branch(params, weight, st, config, device)
        q, scale = quantize_transformed_weight(
            transform_weight(weight, params.smooth_divisor, st.block), config.weight_bits,
            config.fp8, params.weight_clip, params.weight_q)
        served = effective_weight(q, scale, params.smooth_divisor, st.block)
        error = (weight.float() - served).double()
        rows = {g: r for g in range(st.chan_absmax.shape[0])
                if (r := group_rows(st, g, config)) is not None}
        fit = {g: r[0::2] for g, r in rows.items()}
        pooled = torch.cat(list(fit.values()))

        def branch(target, x, rank):
            up, down = fit_low_rank(target.float(), (x.t() @ x / len(x)).float(), rank)
            return up.double() @ down.double()

        left16 = error - branch(error, pooled, 16)
        left48 = error - branch(error, pooled, 48)
        for g, r in rows.items():
            test = r[1::2]
            left = {"base": error, "s16": left16, "s48": left48,
                    "s16+g4": left16 - branch(left16, fit[g], 4),
                    "g16": error - branch(error, fit[g], 16)}
            for kind, matrix in left.items():
                sums = errors.setdefault(g, dict.fromkeys(KINDS, 0.0))
                sums[kind] += float(((test @ matrix.t()) ** 2).mean())

    search._fit_error_branch = probe
    try:
        api.quantize(load_pipeline(model), preset, progress=False)
    finally:
        search._fit_error_branch = fit_branch
    total = {k: sum(e[k] for e in errors.values()) for k in KINDS}
    print(model, preset, "all groups", {k: round(total[k] / total["base"], 4) for k in KINDS})
    for g, e in sorted(errors.items()):
        print("  group", g, {k: round(e[k] / e["base"], 4) for k in KINDS})


if __name__ == "__main__":
    main(*sys.argv[1:3])
