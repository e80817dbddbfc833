"""The low-rank error branch of 4-bit layers (trdq/low_rank.py): the fit is the optimum it
claims, the effective weight is what the layer applies, and the layer adds the branch in
the right place (before a fused GELU) and is closer to full precision with it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import fast, run_image
from trdq import api, low_rank
from trdq.kernels.registry import get_backend
from trdq.low_rank import effective_weight, fit_low_rank
from trdq.nn import QuantLinear
from trdq.quant_transforms import LayerQuantParams, centering_weight_sum
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline
from trdq.timestep import QuantContext


def _metric_error(residual: torch.Tensor, hessian: torch.Tensor) -> float:
    return float(torch.einsum("nk,kl,nl->", residual.double(), hessian.double(), residual.double()))


def test_fit_is_the_truncated_svd_in_the_rows_metric():
    torch.manual_seed(0)
    error = torch.randn(24, 32)
    rows = torch.randn(200, 32) * torch.linspace(0.1, 3.0, 32)  # anisotropic inputs
    hessian = rows.t() @ rows / rows.shape[0]
    up, down = fit_low_rank(error, hessian, 4)
    assert up.shape == (24, 4) and down.shape == (4, 32)
    fitted = _metric_error(error - up @ down, hessian)
    # better than the plain SVD's rank 4 in the rows' metric, and than any random rank 4
    u, s, vt = torch.linalg.svd(error, full_matrices=False)
    plain = _metric_error(error - (u[:, :4] * s[:4]) @ vt[:4], hessian)
    assert fitted < plain
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(24, 4, generator=g), torch.randn(4, 32, generator=g)
        coef = torch.linalg.lstsq((a @ b).reshape(-1, 1), error.reshape(-1, 1)).solution
        assert fitted < _metric_error(error - coef * (a @ b), hessian)
    # full rank leaves nothing
    up, down = fit_low_rank(error, hessian, 32)
    assert _metric_error(error - up @ down, hessian) < 1e-6 * _metric_error(error, hessian)


def test_effective_weight_is_what_the_layer_applies():
    """Its row sums are the centring term's (the layer's own arithmetic), and with the
    rotation undone it is the dequantized weight."""
    torch.manual_seed(1)
    qweight = torch.randint(-7, 8, (16, 64), dtype=torch.int8)
    scale = torch.rand(16) + 0.1
    smooth = torch.rand(64) + 0.5
    served = effective_weight(qweight, scale, smooth, 32)
    torch.testing.assert_close(served.sum(dim=1), centering_weight_sum(qweight, scale, smooth, 32))
    plain = effective_weight(qweight, scale, None, None)
    torch.testing.assert_close(plain, qweight.float() * scale[:, None])


def _layer_with_branch(gelu: str = ""):
    """A 4-bit layer without and with a branch (bf16, as the layer stores it)."""
    torch.manual_seed(2)
    ctx = QuantContext(num_groups=2, group=1, cfg_active=True)
    linear = torch.nn.Linear(32, 8)
    params = LayerQuantParams(None, None, torch.ones(2, 2), torch.ones(2, 2))
    plain = QuantLinear.from_linear(linear, params, get_backend("reference"), ctx,
                                    weight_bits=4, act_mode="dynamic")
    params.low_rank_up = torch.randn(8, 3).bfloat16().float()
    params.low_rank_down = torch.randn(3, 32).bfloat16().float()
    with_branch = QuantLinear.from_linear(linear, params, get_backend("reference"), ctx,
                                          weight_bits=4, act_mode="dynamic")
    plain.output_activation = with_branch.output_activation = gelu
    return plain, with_branch, params


def test_layer_adds_the_branch_on_the_unquantized_rows():
    plain, with_branch, params = _layer_with_branch()
    assert with_branch.low_rank_up.dtype == torch.bfloat16  # 16-bit weights
    x = torch.randn(4, 5, 32)
    branch = x @ params.low_rank_down.t() @ params.low_rank_up.t()
    torch.testing.assert_close(with_branch(x), plain(x) + branch)
    assert "low_rank=3" in repr(with_branch)


def test_branch_joins_before_a_fused_gelu():
    plain, with_branch, params = _layer_with_branch("gelu_tanh")
    x = torch.randn(2, 3, 32)
    plain.output_activation = ""
    pre = plain(x) + x @ params.low_rank_down.t() @ params.low_rank_up.t()
    torch.testing.assert_close(with_branch(x),
                               torch.nn.functional.gelu(pre, approximate="tanh"))


def test_w4a8_branch_brings_the_samples_closer_to_full_precision():
    """On the tiny PixArt every W4A8 layer carries a branch, and the samples with it are
    closer to full precision than the same layers' without it."""
    pipe = tiny_pixart_pipeline()
    reference = run_image(pipe, TINY_PROMPTS[:2], steps=4)
    api.quantize(pipe, fast("w4a8", num_groups=2), progress=False,
                 calibration_prompts=TINY_PROMPTS)
    layers = [m for m in pipe.transformer.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.low_rank_up is not None for m in layers)
    with_branch = run_image(pipe, TINY_PROMPTS[:2], steps=4)
    for layer in layers:
        layer.low_rank_up = layer.low_rank_down = None
    without = run_image(pipe, TINY_PROMPTS[:2], steps=4)
    assert (with_branch - reference).pow(2).mean() < (without - reference).pow(2).mean()


def test_randomized_svd_of_large_errors_matches_the_exact_one(monkeypatch):
    """Above ``EXACT_SVD_MAX`` the fit uses a seeded randomized SVD: the same fit (to the
    exact one's error) and the same numbers on every call."""
    torch.manual_seed(3)
    error = torch.randn(96, 16) @ torch.randn(16, 80) + 0.01 * torch.randn(96, 80)
    rows = torch.randn(300, 80)
    hessian = rows.t() @ rows / rows.shape[0]
    exact = fit_low_rank(error, hessian, 8)
    monkeypatch.setattr(low_rank, "EXACT_SVD_MAX", 32)
    first, second = fit_low_rank(error, hessian, 8), fit_low_rank(error, hessian, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    exact_err = _metric_error(error - exact[0] @ exact[1], hessian)
    random_err = _metric_error(error - first[0] @ first[1], hessian)
    assert random_err <= exact_err * 1.01


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fit_matches_the_host_fit():
    """On a GPU the fit runs in float32 (randomized above EXACT_SVD_MAX): its error in the
    rows' metric is the float64 host fit's, at PixArt's and FLUX's widths."""
    torch.manual_seed(4)
    for n, k in ((1152, 4608), (3072, 15360)):
        error = torch.randn(n, k) * 0.01
        rows = torch.randn(2048, k) * torch.linspace(0.2, 2.0, k)
        hessian = rows.t() @ rows / rows.shape[0]
        host = fit_low_rank(error, hessian, 16)
        gpu = fit_low_rank(error.cuda(), hessian.cuda(), 16)
        host_err = _metric_error(error - host[0] @ host[1], hessian)
        gpu_err = _metric_error(error - (gpu[0] @ gpu[1]).cpu(), hessian)
        assert gpu_err <= host_err * 1.01
