"""Regional compilation finds every family's repeated blocks.

Regression: ``compile_denoiser`` once compiled only ``transformer_blocks`` and
``temporal_transformer_blocks``, so Wan (``blocks``) ran eagerly and FLUX compiled its 19
double blocks but not its 38 single ones, while the bench labelled both rows "compile".
"""

from __future__ import annotations

import pytest
import torch

from trdq.runtime.compile import compile_denoiser, repeated_blocks
from trdq.testing.tiny import tiny_pixart_pipeline
from trdq.testing.tiny_families import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline


def _block_lists(transformer):
    return {name: len(child) for name, child in transformer.named_children()
            if isinstance(child, torch.nn.ModuleList)}


@pytest.mark.parametrize("build, expected", [
    (tiny_pixart_pipeline, {"transformer_blocks": 2}),
    (lambda: tiny_flux_pipeline(double_layers=2, single_layers=3),
     {"transformer_blocks": 2, "single_transformer_blocks": 3}),
    (lambda: tiny_sd3_pipeline(layers=2), {"transformer_blocks": 2}),
    (lambda: tiny_wan_pipeline(layers=3), {"blocks": 3}),
], ids=["pixart", "flux", "sd3", "wan"])
def test_every_block_list_of_each_family_is_found(build, expected):
    transformer = build().transformer
    assert _block_lists(transformer) == expected
    blocks = repeated_blocks(transformer)
    assert len(blocks) == sum(expected.values())
    listed = [b for name in expected for b in getattr(transformer, name)]
    assert [id(b) for b in blocks] == [id(b) for b in listed]


def test_regional_compile_wraps_each_block_and_keeps_the_output():
    pipe = tiny_wan_pipeline(layers=2)
    transformer = pipe.transformer
    torch.manual_seed(0)
    hidden = torch.randn(1, 16, 1, 8, 8)
    text = torch.randn(1, 8, transformer.config.text_dim)
    t = torch.tensor([500])
    with torch.no_grad():
        eager = transformer(hidden, t, text, return_dict=False)[0]
    torch._dynamo.reset()
    try:
        assert compile_denoiser(transformer, "regional") == 2
        assert all(block._compiled_call_impl is not None for block in transformer.blocks)
        with torch.no_grad():
            compiled = transformer(hidden, t, text, return_dict=False)[0]
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_a_denoiser_without_repeated_blocks_is_refused():
    with pytest.raises(ValueError, match="no repeated blocks"):
        compile_denoiser(torch.nn.Sequential(torch.nn.Linear(2, 2)), "regional")
    with pytest.raises(ValueError, match="unknown compile mode"):
        compile_denoiser(torch.nn.Linear(2, 2), "everything")
