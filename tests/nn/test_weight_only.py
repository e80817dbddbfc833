"""WeightOnlyLinear's few-row forms: the compiled reduction (``_reduced_forward``) and the
int8 GEMV operator the CUDA forward calls, each the same product as the
dequantize-then-GEMM forward; compiled without the dequantized weight."""

from __future__ import annotations

import math
import re

import pytest
import torch

from trdq.nn.weight_only import WEIGHT_ONLY_INT4_GROUP, WeightOnlyLinear


def _allocated_elements(codes: list[str]) -> list[int]:
    """The element count of every buffer the generated code allocates."""
    sizes = re.findall(r"empty_strided_\w+\(\(([0-9, ]+)\)", "\n".join(codes))
    return [math.prod(int(d) for d in size.split(",") if d.strip()) for size in sizes]


def _layer(bits: int) -> WeightOnlyLinear:
    torch.manual_seed(bits)
    linear = torch.nn.Linear(256, 96)
    return WeightOnlyLinear(linear, bits, None if bits == 8 else WEIGHT_ONLY_INT4_GROUP)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 2])
def test_the_reduction_equals_the_dequantized_product(bits, rows):
    layer = _layer(bits)
    x = torch.randn(rows, 1, 256)
    want = layer(x)  # eager: dequantize, then the GEMM
    got = layer._reduced_forward(x, layer.bias)
    assert got.shape == want.shape == (rows, 1, 96)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [8, 4])
def test_compiled_few_rows_read_the_integer_weight_without_dequantizing_it(bits):
    from torch._inductor.utils import run_and_get_code

    layer = _layer(bits)
    x = torch.randn(1, 256)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        got, codes = run_and_get_code(compiled, x)
        want = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # no buffer as large as the weight is written (the eager form's dequantized copy)
    assert max(_allocated_elements(codes)) < 96 * 256
    # more rows than that keep the dequantize-then-GEMM form
    torch.testing.assert_close(compiled(torch.randn(8, 256)).shape, torch.Size([8, 96]))


@pytest.mark.parametrize("rows", [1, 2])
def test_the_gemv_operator_on_the_layers_buffers_equals_the_forward(rows, monkeypatch):
    """What the CUDA forward passes to ``trdq::int8_gemv`` (its reference on the CPU, the
    Triton kernel checked against that in tests/kernels): the layer's own output."""
    from trdq.kernels import triton_gemv
    from trdq.nn import weight_only

    layer = _layer(8)
    x = torch.randn(rows, 1, 256)
    want = layer(x)
    calls = []
    real = weight_only.int8_gemv
    monkeypatch.setattr(weight_only, "int8_gemv", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    monkeypatch.setattr(triton_gemv, "TRITON_AVAILABLE", False)  # the operator's reference
    got = layer(x)
    assert calls == [1] and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
