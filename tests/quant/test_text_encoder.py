"""Weight-only int8 / int4 text encoder: smaller weights, nearly the same embeddings."""

from __future__ import annotations

import pytest
import torch

from trdq import primitives as P
from trdq.pipeline import load_pipeline
from trdq.text_encoder import WeightOnlyLinear, quantize_text_encoder


@pytest.mark.parametrize("bits,group,min_sqnr", [(8, None, 38.0), (4, 64, 15.0)])
def test_weight_only_linear_is_close_to_float(bits, group, min_sqnr):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    layer = WeightOnlyLinear(linear, bits, group)
    x = torch.randn(7, 256)
    assert P.sqnr_db(linear(x), layer(x)) > min_sqnr
    expected_bytes = 96 * 256 * bits // 8
    assert layer.qweight.numel() * layer.qweight.element_size() == expected_bytes


def test_zoo_text_encoder_int8_halves_and_keeps_the_embeddings():
    pipe = load_pipeline("tiny-shapes-t2i")
    encoder = pipe.text_encoder
    tokens = pipe.tokenizer(["a small red circle at the top left on a white background"],
                            return_tensors="pt").input_ids
    with torch.no_grad():
        before = encoder(tokens)[0]
        report = quantize_text_encoder(encoder, "int8")
        after = encoder(tokens)[0]
    assert report.replaced and report.bytes_after < report.bytes_before
    linear_share = report.bytes_after / report.bytes_before
    assert linear_share < 0.75, linear_share  # embeddings and norms stay fp32
    assert P.sqnr_db(before, after) > 30


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="text encoder quant"):
        quantize_text_encoder(torch.nn.Linear(4, 4), "int3")
