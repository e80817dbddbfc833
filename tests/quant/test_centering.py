"""Centred per-token activations (``act_center``): exact in float, better once quantized."""

from __future__ import annotations

import pytest
import torch

from trdq import primitives as P
from trdq.config import QuantConfig
from trdq.kernels import get_backend
from trdq.nn import QuantLinear
from trdq.quant_transforms import LayerQuantParams
from trdq.timestep import QuantContext


def _layer(linear, backend: str, center: bool, rotation_block: int | None = 64,
           bits: int = 8) -> QuantLinear:
    params = LayerQuantParams(rotation_block, None, torch.ones(1, 2), torch.ones(1, 2))
    return QuantLinear.from_linear(
        linear, params, get_backend(backend), QuantContext(num_groups=1),
        weight_bits=bits, act_mode="dynamic", act_center=center,
    )


def _one_sided_tokens(rows: int = 96, width: int = 128) -> torch.Tensor:
    """Post-GELU-like inputs: mostly positive, with a large per-token offset."""
    torch.manual_seed(0)
    x = torch.nn.functional.gelu(torch.randn(rows, width) * 2)
    return x + torch.rand(rows, 1) * 4


@pytest.mark.parametrize("rotation_block", [None, 64])
def test_the_mean_comes_back_through_the_weight_sums(rotation_block):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 48)
    layer = _layer(linear, "reference", center=True, rotation_block=rotation_block)
    # a token whose channels are all equal is all mean: nothing is left to quantize, so
    # the output is bias + mean x (row sums of the rotated-back dequantized weight)
    x = torch.full((3, 128), 2.5)
    assert torch.all(layer.weight_sum.abs() > 0)
    assert P.sqnr_db(linear(x), layer(x)) > 40


@pytest.mark.parametrize("rotation_block", [None, 64])
def test_centring_cuts_the_error_on_one_sided_tokens(rotation_block):
    torch.manual_seed(1)
    linear = torch.nn.Linear(128, 64)
    x = _one_sided_tokens()
    exact = linear(x)
    plain = P.sqnr_db(exact, _layer(linear, "cpu_int8", False, rotation_block)(x))
    centred = P.sqnr_db(exact, _layer(linear, "cpu_int8", True, rotation_block)(x))
    assert centred > plain + 1.5, (plain, centred)  # measured +2.4 dB unrotated


def _cuda_backend(name: str):
    """A CUDA backend case: runs on the device machine, skipped in CI."""
    ok = torch.cuda.is_available() and get_backend(name).is_available("cuda")[0]
    return pytest.param(name, "cuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not ok, reason=f"needs CUDA for {name}")])


@pytest.mark.parametrize("backend,device", [
    ("cpu_int8", "cpu"), _cuda_backend("cuda_fp8"), _cuda_backend("cuda_w4a8")])
def test_fast_backend_matches_the_reference_when_centred(backend, device):
    torch.manual_seed(2)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    linear = torch.nn.Linear(128, 64).to(device, dtype)
    x = _one_sided_tokens().to(device, dtype)
    bits = 4 if backend == "cuda_w4a8" else 8
    reference = _layer(linear, "reference", True, bits=bits)(x).float()
    fast = _layer(linear, backend, True, bits=bits)(x).float()
    # cpu_int8 and the int8 reference round alike; e4m3 and bf16 round differently
    assert P.sqnr_db(reference, fast) > (50 if device == "cpu" else 25)


@pytest.mark.parametrize("backend", ["cuda_fp8", "cuda_w4a8"])
def test_fused_centring_matches_the_unfused_form(backend):
    """The CUDA backends centre inside their ops (kernel mean, GEMM epilogue); their ops'
    reference path runs here on the CPU and must give what QuantLinear's own centring
    around the reference backend gives."""
    assert get_backend(backend).fuses_centering
    assert not get_backend("reference").fuses_centering
    torch.manual_seed(3)
    linear = torch.nn.Linear(128, 64)
    x = _one_sided_tokens()
    fused = _layer(linear, backend, True)
    unfused = _layer(linear, "reference", True)
    torch.testing.assert_close(fused.weight_sum, unfused.weight_sum)
    floor = 30 if backend == "cuda_fp8" else 50  # e4m3 re-rounds the int8 grid
    assert P.sqnr_db(unfused(x), fused(x)) > floor
    assert P.sqnr_db(linear(x), fused(x)) > 30


def test_centring_needs_per_token_activations():
    with pytest.raises(ValueError, match="act_center"):
        QuantConfig(act_mode="static", act_center=True)
    assert QuantConfig.preset("w8a8").act_center
    assert not QuantConfig.preset("w8a8-minmax").act_center  # the plain baseline
    assert not QuantConfig.preset("w8a8-static").act_center
