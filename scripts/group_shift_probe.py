"""CPU probe: would a per-timestep-group channel shift make the time dimension pay at A4?

Why: issue #25 asks per-group parameters to beat one-group calibration. A layer could
quantize ``x - mu_g`` (``mu_g`` the channel means of group g's inputs) and add ``W mu_g``
back exactly, a per-group zero point (docs/journal/2026-12-06-ablation-groups.md named it
the next candidate). This measures, in every layer as the preset calibrates it, the
output error that 4-bit per-token activation quantization (centred, rotated, as served)
causes on held-out rows of each group (every other stored row fits the means, the rest
test), as a fraction of the output's energy:

- ``none``: as served;
- ``shift_g``: each group's own channel means subtracted first;
- ``shift_1``: one mean over all groups subtracted first.

Layers with a smoothing divisor are left out (the probe rotates the weight only).
Usage: ``python scripts/group_shift_probe.py tiny-shapes-t2i w4a4``.
"""

from __future__ import annotations

import sys

import torch

from trdq import api
from trdq import primitives as P
from trdq.calibration import search
from trdq.pipeline import load_pipeline


def main(model: str, preset: str) -> None:
    sums = {"base": 0.0, "none": 0.0, "shift_g": 0.0, "shift_1": 0.0}
    fit_branch = search._fit_error_branch

    def probe(params, weight, st, config, device):
        fit_branch(params, weight, st, config, device)
        if params.smooth_divisor is not None:
            return
        rows = {}
        for key in sorted(st.rows):
            rows.setdefault(key[0], []).extend(t.flatten(0, 1) for t in st.rows[key])
        rows = {g: torch.cat(parts).double() for g, parts in rows.items()}
        means = {g: r[0::2].mean(0) for g, r in rows.items()}
        mean_all = torch.cat([r[0::2] for r in rows.values()]).mean(0)
        w_rot = search.rotate_rows(weight.float(), st.block, None).double()
        qmax = P.qmax_for(config.act_bits)

        def output_error(x):
            xr = search.rotate_rows(search.center_rows(x, config).float(), st.block, None)
            xr = xr.double()
            scale = P.dynamic_row_scale(xr, config.act_bits).double()[:, None]
            error = torch.clamp(torch.round(xr / scale), -qmax, qmax) * scale - xr
            return float(((error @ w_rot.t()) ** 2).mean())

        for g, r in rows.items():
            test = r[1::2]
            sums["base"] += float(((test @ weight.double().t()) ** 2).mean())
            sums["none"] += output_error(test)
            sums["shift_g"] += output_error(test - means[g])
            sums["shift_1"] += output_error(test - mean_all)

    search._fit_error_branch = probe
    try:
        api.quantize(load_pipeline(model), preset, progress=False)
    finally:
        search._fit_error_branch = fit_branch
    print(model, preset, {k: round(v / sums["base"], 5) for k, v in sums.items() if k != "base"})


if __name__ == "__main__":
    main(*sys.argv[1:3])
