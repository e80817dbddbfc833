"""GPTQ rounding against round-to-nearest on the same scales (the oracle)."""

from __future__ import annotations

import torch

from trdq import primitives as P
from trdq.gptq import gptq_round


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    weight = torch.randn(48, 160)
    mix = torch.randn(160, 160) / 160**0.5 + torch.eye(160)  # correlated input channels
    x = torch.randn(1024, 160) @ mix
    _, scale = P.quantize_weight_per_channel(weight, 4)
    return weight, x, scale


def _output_error(weight, q, scale, x) -> float:
    return float((x @ (q.float() * scale[:, None] - weight).t()).pow(2).mean())


def test_gptq_lowers_the_output_error_of_round_to_nearest():
    weight, x, scale = _setup()
    nearest, _ = P.quantize_weight_per_channel(weight, 4)
    q = gptq_round(weight, x.t() @ x, scale, 4)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    assert q.min() >= -7 and q.max() <= 7
    assert _output_error(weight, q, scale, x) < 0.7 * _output_error(weight, nearest, scale, x)
    # each integer stays near the weight it stands for (compensation, not a new matrix)
    assert (q.float() - weight / scale[:, None]).abs().max() < 4


def test_uncorrelated_inputs_leave_nothing_to_compensate():
    """With H diagonal no error spreads to other columns: GPTQ is round-to-nearest."""
    weight, _, scale = _setup(1)
    nearest, _ = P.quantize_weight_per_channel(weight, 4)
    hessian = torch.diag(torch.rand(160) + 0.5)
    assert torch.equal(gptq_round(weight, hessian, scale, 4), nearest)


def test_dead_input_channels_and_8_bits():
    weight, x, _ = _setup(2)
    x[:, :10] = 0  # channels that never fire: H has zero rows and columns there
    _, scale = P.quantize_weight_per_channel(weight, 8)
    q = gptq_round(weight, x.t() @ x, scale, 8)
    assert q.abs().max() <= 127
    assert P.sqnr_db(weight, q.float() * scale[:, None]) > 35
