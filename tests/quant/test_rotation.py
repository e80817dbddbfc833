"""Rotation: orthogonality, fast transform == matrix, and the outlier benefit."""

from __future__ import annotations

import pytest
import torch

from trdq import primitives as P
from trdq.rotation import (
    DuQuantRotation,
    block_hadamard_matrix,
    fwht,
    hadamard_block_size,
    hadamard_transform,
    hadamard_transform_factored,
    rotate_weight,
)


@pytest.mark.parametrize("width,expected_block", [(64, 64), (256, 128), (1152, 128), (96, 32),
                                                  (4608, 128)])
def test_block_size(width, expected_block):
    assert hadamard_block_size(width, 128) == expected_block


@pytest.mark.parametrize("width", [64, 256, 1152])
def test_block_hadamard_is_orthogonal_and_symmetric(width):
    block = hadamard_block_size(width)
    r = block_hadamard_matrix(width, block, dtype=torch.float64)
    torch.testing.assert_close(r @ r.T, torch.eye(width, dtype=torch.float64))
    torch.testing.assert_close(r, r.T)


@pytest.mark.parametrize("width", [64, 1152])
def test_fwht_matches_matrix_and_preserves_products(width):
    block = hadamard_block_size(width)
    x = torch.randn(7, width, dtype=torch.float64)
    w = torch.randn(5, width, dtype=torch.float64)
    r = block_hadamard_matrix(width, block, dtype=torch.float64)
    torch.testing.assert_close(fwht(x, block).double(), (x.float() @ r.float()).double(),
                               atol=1e-4, rtol=1e-4)
    # x W^T = (x R)(W R)^T
    torch.testing.assert_close(fwht(x, block) @ rotate_weight(w, block).T, x @ w.T,
                               atol=1e-3, rtol=1e-4)
    # involution: R R = I
    torch.testing.assert_close(fwht(fwht(x, block), block), x.float().double(), atol=1e-4,
                               rtol=1e-4, check_dtype=False)


def test_rotation_cuts_int8_error_with_outlier_channels():
    torch.manual_seed(0)
    width = 1152
    x = torch.randn(256, width)
    outliers = torch.tensor([3, 200, 777])
    x[:, outliers] *= 60.0  # planted outlier channels, as after adaLN in real DiTs
    block = hadamard_block_size(width)

    def int8_error(a: torch.Tensor) -> float:
        scale = P.dynamic_row_scale(a, 8)[:, None]
        return float((P.fake_quant_symmetric(a, scale, 8) - a).pow(2).mean())

    plain = int8_error(x)
    rotated = int8_error(fwht(x, block))  # same norm: the error is comparable
    assert rotated < plain / 4, (plain, rotated)


def test_duquant_rotation_is_orthogonal():
    gen = torch.Generator().manual_seed(0)
    absmax = torch.rand(256) * 10
    rot = DuQuantRotation.fit(absmax, 64, gen)
    x = torch.randn(4, 256)
    w = torch.randn(3, 256)
    torch.testing.assert_close(rot.apply(x) @ rot.apply(w).T, x @ w.T, atol=1e-4, rtol=1e-4)
    assert sorted(rot.perm.tolist()) == list(range(256))


@pytest.mark.parametrize("block", [1, 2, 8, 32, 128, 256])
def test_factored_hadamard_matches_the_dense_one(block):
    x = torch.randn(5, 3 * block)
    torch.testing.assert_close(hadamard_transform_factored(x, block),
                               hadamard_transform(x, block), rtol=0, atol=1e-5)


def test_factored_hadamard_keeps_dtype_and_checks_the_width():
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    assert hadamard_transform_factored(x, 128).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="divide"):
        hadamard_transform_factored(torch.randn(2, 96), 64)
