"""The 8-bit attention oracle (``quant_attention_reference``) against exact attention on
the CPU; the Triton kernel is checked against this oracle in test_kernels_gpu.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trdq import primitives as P
from trdq.kernels.triton_attention import (
    KV_BLOCK,
    head_dim_split,
    quant_attention_reference,
    quant_attention_triton,
)


def _qkv(b, h, s, d, seed=0, key_offset=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, s, d, generator=g) for _ in range(3))
    return q * 2, k + key_offset, v


@pytest.mark.parametrize("head_dim,split", [(8, (32, 0)), (64, (64, 0)), (72, (64, 32)),
                                            (96, (64, 32)), (128, (64, 64))])
def test_head_dim_split_covers_the_head_in_power_of_two_chunks(head_dim, split):
    assert head_dim_split(head_dim) == split
    assert sum(split) >= head_dim


def test_head_dim_split_refuses_what_the_kernel_cannot_hold():
    with pytest.raises(ValueError):
        head_dim_split(0)
    with pytest.raises(ValueError):
        head_dim_split(256)


@pytest.mark.parametrize("shape", [(1, 2, 120, 72), (2, 3, 2 * KV_BLOCK + 5, 64)])
def test_reference_is_close_to_exact_attention(shape):
    q, k, v = _qkv(*shape)
    exact = F.scaled_dot_product_attention(q, k, v)
    # e4m3 P V is the coarse part (~29 dB on Gaussian data); bf16 P V leaves the int8 Q K^T
    assert P.sqnr_db(exact, quant_attention_reference(q, k, v)) > 26
    assert P.sqnr_db(exact, quant_attention_reference(q, k, v, pv_fp8=False)) > 32


def test_key_centring_makes_a_shared_key_offset_free():
    """A vector added to every key changes each query's logits by a constant: softmax
    ignores it, and the centred int8 keys are identical, so the result is too."""
    q, k, v = _qkv(1, 2, 130, 72, key_offset=0.0)
    a = quant_attention_reference(q, k, v, pv_fp8=False)
    b = quant_attention_reference(q, k + 3.0 * torch.randn(72), v, pv_fp8=False)
    assert P.sqnr_db(a, b) > 60


def test_triton_entry_point_refuses_cpu_tensors():
    q, k, v = _qkv(1, 1, 8, 64)
    with pytest.raises((RuntimeError, ValueError)):
        quant_attention_triton(q, k, v)
