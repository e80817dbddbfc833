"""The low-rank error branch of 4-bit layers: what the integer weight gets wrong, put back.

A quantized layer serves ``W_q`` (its integer weight, dequantized, rotated back) instead of
``W``; the output error is ``E x`` with ``E = W - W_q``. At W4A8 this weight error is most
of the layer's error (docs/QUALITY.md), and it is the same for every row: calibration fits
a rank-``r`` correction ``U V`` to it in the metric of the layer's calibration rows,

    min  E_x || (E - U V) x ||^2  =  || (E - U V) L ||_F^2,   H = E[x x^T] = L L^T,

whose solution is the truncated SVD of ``E L`` mapped back by ``L^(-1)``. The
layer serves ``y = Q(x) W_q^T + (x V^T) U^T``: two thin full-precision GEMMs on the
unquantized input beside the packed weight (``V`` is ``[r, K]``, ``U`` is ``[N, r]``;
stored in bf16 (fp16 in an fp16 model): r = 16 costs 32 (N + K) bytes, 11% of a
1152 x 1152 int4 weight, 7% of a 1152 x 4608 one).
SVDQuant keeps a weight's top singular directions in such a branch before quantizing; here
the branch is fitted afterwards, to the integer weight's own error as the rows see it.

Tried and removed: a per-timestep-group (per CFG half) bias of what the branch leaves at
each group's mean input, ``(E - U V) mu_g``. It moved PSNR to FP by -0.17 / +0.07 dB (image
/ video zoo, W4A8) for 64 N bytes a layer: a branch fitted on every group's rows already
spans the few directions in which the groups' mean inputs differ
(docs/journal/2026-12-07-low-rank-branch.md). Measured and not built: a rank-4 branch per
group on what the shared one leaves, which cuts the held-out layer error a sixth as much as
the same bytes spent as shared rank (``scripts/group_branch_probe.py``, docs/QUALITY.md).
"""

from __future__ import annotations

import torch

from trdq.quant_transforms import smooth_and_rotate

__all__ = ["effective_weight", "fit_low_rank"]

#: relative damping added to ``H``'s diagonal before its square root (rows seldom span
#: every input direction; a direction no row takes has no error worth fitting)
HESSIAN_DAMPING = 1e-4
#: a full SVD up to this size on the shorter side (the zoo, PixArt); randomized above
EXACT_SVD_MAX = 2048
#: randomized SVD's extra columns and power iterations (Halko et al.: ample for 16 of 3072)
SVD_OVERSAMPLING = 16
SVD_POWER_ITERATIONS = 4


def effective_weight(qweight: torch.Tensor, weight_scale: torch.Tensor,
                     smooth_divisor: torch.Tensor | None, rotation_block: int | None) -> torch.Tensor:
    """``[N, K]`` float32: the weight a quantized layer applies to an input row, in the
    input's own space. The kernels compute ``T(x) W_t^T`` with ``T`` the smoothing and
    rotation (linear: ``T(x) = x T``), so the effective weight is ``W_t T^T``."""
    k = qweight.shape[1]
    device = qweight.device
    smooth = None if smooth_divisor is None else smooth_divisor.to(device)
    transform = smooth_and_rotate(torch.eye(k, device=device), smooth, rotation_block)
    return (qweight.float() * weight_scale.float()[:, None]) @ transform.t()


def fit_low_rank(error: torch.Tensor, hessian: torch.Tensor,
                 rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up [N, r], down [r, K])`` minimising ``||(error - up @ down) H^(1/2)||_F`` (float32,
    on ``error``'s device); ``r`` is ``rank`` or less where K or N is smaller.

    With ``H = L L^T`` (Cholesky) the objective is ``||(error - up @ down) L||_F``, so the
    optimum is the truncated SVD of ``error @ L`` with ``down`` mapped back by ``L^(-1)``:
    one Cholesky and one (truncated) SVD, cheaper than the symmetric square root at FLUX's
    K = 15360.
    """
    k = hessian.shape[0]
    # float64 on the host; float32 on a GPU, whose float64 GEMMs would take seconds per
    # layer at FLUX's widths (the damping keeps the Cholesky well conditioned)
    dtype = torch.float64 if error.device.type == "cpu" else torch.float32
    h = hessian.to(dtype)
    h = h + HESSIAN_DAMPING * h.diagonal().mean().clamp_min(1e-12) * torch.eye(
        k, dtype=dtype, device=h.device)
    lower = torch.linalg.cholesky(h)
    left, singular, right = _top_singular(error.to(dtype) @ lower, rank)
    up = left * singular
    # down = right L^(-1), i.e. the solution of L^T down^T = right^T
    down = torch.linalg.solve_triangular(lower.t(), right.t(), upper=True).t()
    return up.float(), down.float()


def _top_singular(matrix: torch.Tensor,
                  rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``rank`` leading singular triplets ``(U [m, r], S [r], V^T [r, n])``: exact below
    ``EXACT_SVD_MAX`` on the shorter side, else by seeded randomized SVD (deterministic;
    FLUX's 3072 x 15360 errors would take seconds each in a float64 full SVD on a GPU)."""
    if min(matrix.shape) <= EXACT_SVD_MAX:
        left, singular, right = torch.linalg.svd(matrix, full_matrices=False)
        r = min(rank, singular.shape[0])
        return left[:, :r], singular[:r], right[:r]
    devices = [matrix.device] if matrix.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        left, singular, right_t = torch.svd_lowrank(matrix, q=rank + SVD_OVERSAMPLING,
                                                    niter=SVD_POWER_ITERATIONS)
    return left[:, :rank], singular[:rank], right_t[:, :rank].t()
