"""Primitives: packing layout, symmetric ranges, fp8 helpers."""

from __future__ import annotations

import torch

from trdq import primitives as P


def test_int4_pack_layout_and_roundtrip():
    q = torch.tensor([[1, -2, 7, -7, 0, -8]], dtype=torch.int8)
    packed = P.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 3)
    # low nibble = even k, high nibble = odd k, two's complement
    assert packed[0, 0].item() == (1 & 0xF) | ((-2 & 0xF) << 4)
    torch.testing.assert_close(P.unpack_int4(packed), q)
    big = torch.randint(-7, 8, (33, 64), dtype=torch.int8)
    torch.testing.assert_close(P.unpack_int4(P.pack_int4(big)), big)
    # every byte: each nibble sign-extended on its own (the shifts' oracle is arithmetic)
    every = torch.arange(256, dtype=torch.uint8).view(1, 256)
    want = torch.stack([every & 0xF, every >> 4], dim=-1).flatten(-2).to(torch.int16)
    want = torch.where(want >= 8, want - 16, want).to(torch.int8)
    assert torch.equal(P.unpack_int4(every), want)


def test_weight_quant_ranges():
    w = torch.randn(16, 64)
    for bits in (4, 8):
        q, scale = P.quantize_weight_per_channel(w, bits)
        qmax = P.qmax_for(bits)
        assert q.dtype == torch.int8 and q.abs().max() <= qmax
        assert scale.shape == (16,)
        assert (q.abs().amax(dim=1) == qmax).all()  # min-max uses the full range
        assert P.sqnr_db(w, q.float() * scale[:, None]) > (30 if bits == 8 else 15)


def test_fp8_weight_quant():
    w = torch.randn(8, 32)
    q, scale = P.quantize_weight_per_channel(w, 8, fp8=True)
    assert q.dtype == torch.float8_e4m3fn
    assert P.sqnr_db(w, q.float() * scale[:, None]) > 25


def test_zero_rows_do_not_divide_by_zero():
    x = torch.zeros(3, 16)
    scale = P.dynamic_row_scale(x, 8)
    assert torch.isfinite(P.fake_quant_symmetric(x, scale[:, None], 8)).all()


def test_output_weight_clip_never_loses_on_the_output_error_it_minimises():
    """The chosen clips lower ``dW H dW^T`` against min-max on every channel, and with
    inputs that only use some input channels the search follows those channels."""
    torch.manual_seed(0)
    weight = torch.distributions.StudentT(3.0).sample((64, 256))  # a few large weights per row
    x = torch.randn(512, 256) * torch.linspace(0.05, 3.0, 256)  # uneven channel energy
    hessian = x.t() @ x / x.shape[0]

    def output_errors(clip: torch.Tensor | None) -> torch.Tensor:
        q, scale = P.quantize_weight_per_channel(weight, 4, clip=clip)
        dw = q.float() * scale[:, None] - weight
        return ((dw @ hessian) * dw).sum(dim=1)

    clips = P.output_weight_clip(weight, hessian, 4)
    assert clips.min() >= min(P.WEIGHT_CLIP_GRID) and clips.max() <= 1.0
    assert (clips < 1.0).any()
    plain, searched = output_errors(None), output_errors(clips)
    assert torch.all(searched <= plain * (1 + 1e-5))  # 1.0 is in the grid
    assert searched.sum() < 0.9 * plain.sum()
    # an all-zero input column makes that weight column irrelevant: its huge entry must
    # not decide the channel's range
    w2 = torch.randn(4, 64)
    w2[:, 0] = 50.0
    h2 = torch.eye(64)
    h2[0, 0] = 0.0
    assert torch.all(P.output_weight_clip(w2, h2, 4) <= 0.6)
