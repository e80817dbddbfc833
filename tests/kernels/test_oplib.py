"""``trdq.kernels.oplib.define_op``: how every ``trdq::`` operator is registered.

A toy operator in its own namespace: the schema comes from the type hints, the function
runs as the CPU kernel, the fake implementation serves meta tensors, and
``torch.compile`` traces it as one node without a graph break.
"""

from __future__ import annotations

import torch

from trdq.kernels.oplib import define_op


def _scale_rows(x: torch.Tensor, scale: torch.Tensor | None, shift: int = 0,
                mode: str = "") -> torch.Tensor:
    out = x * scale[:, None] if scale is not None else x.clone()
    return out + shift if mode == "shift" else out


def _scale_rows_fake(x, scale, shift=0, mode=""):
    return x.new_empty(x.shape)


scale_rows = define_op("trdq_oplib_test::scale_rows", _scale_rows, _scale_rows_fake)


def test_schema_comes_from_the_type_hints():
    schema = str(torch.ops.trdq_oplib_test.scale_rows.default._schema)
    assert schema == ('trdq_oplib_test::scale_rows(Tensor x, Tensor? scale, SymInt shift=0, '
                      'str mode="") -> Tensor')


def test_the_function_is_the_cpu_kernel_and_defaults_apply():
    x, s = torch.randn(3, 4), torch.rand(3)
    torch.testing.assert_close(scale_rows(x, s), x * s[:, None])
    torch.testing.assert_close(scale_rows(x, None, 2, "shift"), x + 2)
    with torch.no_grad():  # how diffusers pipelines call it
        torch.testing.assert_close(scale_rows(x, s, mode="shift"), x * s[:, None])


def test_meta_tensors_take_the_fake_implementation():
    out = scale_rows(torch.empty(5, 7, device="meta"), None)
    assert out.device.type == "meta" and out.shape == (5, 7)


def test_compiles_as_one_node_without_graph_break():
    torch._dynamo.reset()

    def f(x, s):
        return torch.relu(scale_rows(x * 2, s, 1, "shift"))

    x, s = torch.randn(4, 8), torch.rand(4)
    assert torch._dynamo.explain(f)(x, s).graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, s), f(x, s))
