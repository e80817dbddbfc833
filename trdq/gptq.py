"""Error-compensating weight rounding (GPTQ, Frantar et al. 2023) for integer weights.

Round-to-nearest rounds every weight on its own. GPTQ rounds the input columns one at a
time and pushes each column's rounding error onto the columns not yet rounded, weighted
by the inverse of ``H = X^T X`` (the layer's inputs from calibration), so the *output*
error ``dW H dW^T`` stays small rather than each weight's. Same integer format, same
per-channel scales: the kernels see ordinary int4/int8 weights; only which integers they
hold changes. Applied to the weight as QuantLinear stores it (smoothed and rotated),
with ``H`` built from the activations as the kernel sees them (centred, rotated), it is
the rotation + GPTQ combination of QuaRot/SpinQuant.

Why it is needed here: the zoo DiTs' weights are flat, so after the Hadamard rotation
4-bit round-to-nearest is no better than min-max on the raw weights (docs/QUALITY.md);
calibration-aware rounding is the lever that works at 4 bits.
"""

from __future__ import annotations

import torch

from trdq import primitives as P

__all__ = ["gptq_round"]

#: columns rounded between two updates of the rest of the matrix (the algorithm's "lazy
#: batch"; any value gives the same result up to float rounding, 128 keeps GEMMs large)
BLOCK = 128
#: diagonal damping, as a fraction of H's mean diagonal (stabilises the inverse when the
#: calibration rows do not span every input direction)
DAMP = 0.01


@torch.no_grad()
def gptq_round(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor,
               bits: int) -> torch.Tensor:
    """Integer weights ``[N, K]`` (int8 holding ``bits``-bit values) for ``weight [N, K]``
    with per-output-channel ``scale [N]``, rounded to keep ``dW H dW^T`` small.

    ``hessian [K, K]`` is ``X^T X`` (any positive multiple) of the layer's inputs.
    """
    qmax = P.qmax_for(bits)
    w = weight.detach().float().clone()
    k = w.shape[1]
    h = hessian.detach().float().to(w.device).clone()
    dead = torch.diag(h) <= 0
    h[dead, dead] = 1.0  # an input channel that never fires: its column rounds plainly
    h += DAMP * torch.diag(h).mean() * torch.eye(k, device=w.device)
    # upper Cholesky factor of H^-1: row i holds how column i's error spreads to later ones
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scale.detach().float().to(w.device)[:, None].clamp_min(P.MIN_SCALE)
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block = w[:, start:end].clone()
        errors = torch.empty_like(block)
        hb = hinv[start:end, start:end]
        for i in range(end - start):
            column = block[:, i : i + 1]
            qi = torch.clamp(torch.round(column / s), -qmax, qmax)
            q[:, start + i] = qi[:, 0].to(torch.int8)
            err = (column - qi * s) / hb[i, i]
            block[:, i:] -= err * hb[i : i + 1, i:]
            errors[:, i : i + 1] = err
        w[:, end:] -= errors @ hinv[start:end, end:]
    return q
