"""Static FP8 attention (``trdq.nn.static_attention``) on the CPU, through the e4m3 oracle:
recorded statistics reproduce the dynamic ones, the calibrated means are exact whatever
they are, groups and CFG halves pick their own values, and a calibrated tiny PixArt stays
as close to full precision as with dynamic FP8 attention."""

from __future__ import annotations

import functools

import pytest
import torch

from trdq import primitives as P
from trdq.kernels import fa3_attention as fa3
from trdq.nn import static_attention
from trdq.nn.attention import KernelAttnProcessor, resolve_attention_backend
from trdq.nn.static_attention import (
    COND,
    UNCOND,
    AttentionRecorder,
    StaticFp8Attention,
    calibrate_static_attention,
)
from trdq.testing.tiny import TEXT_DIM, tiny_pixart_transformer
from trdq.timestep import QuantContext


@pytest.fixture(autouse=True)
def _every_sequence_takes_fp8(monkeypatch):
    """The tiny models' sequences are shorter than ``STATIC_MIN_TOKENS``."""
    monkeypatch.setattr(static_attention, "STATIC_MIN_TOKENS", 0)


def _qkv(batch=2, tokens=24, heads=2, dim=8, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, tokens, heads, dim, generator=g) for _ in range(3))
    return q, k + offset, v - offset


def test_one_recorded_call_gives_the_inputs_own_statistics():
    q, k, v = _qkv(batch=1, offset=3.0)
    recorder = AttentionRecorder(fa3.sdpa_attention, QuantContext())
    torch.testing.assert_close(recorder(q, k, v), fa3.sdpa_attention(q, k, v))
    static = recorder.freeze(num_groups=1, margin=1.0)
    got, own = static.stats(1), fa3.attention_input_stats(q, k, v)
    for name in own._fields:
        torch.testing.assert_close(getattr(got, name), getattr(own, name))
    static.kernel = fa3.fp8_attention_reference
    torch.testing.assert_close(static(q, k, v), fa3.fp8_attention_reference(q, k, v))


def test_any_means_are_exact_without_rounding():
    """Unrounded operands (the oracle with no e4m3 operand): the result is exact attention
    whatever means are subtracted, the property that lets them be calibrated."""
    q, k, v = _qkv(offset=2.0)
    heads, dim = q.shape[2], q.shape[3]
    amax = torch.full((1, 2, 3, heads), 10.0)
    means = torch.randn(1, 2, 2, heads, dim) * 5
    exact_kernel = functools.partial(fa3.fp8_attention_reference, operands=())
    static = StaticFp8Attention(amax, means, QuantContext(), kernel=exact_kernel)
    torch.testing.assert_close(static(q, k, v), fa3.sdpa_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_sequences_shorter_than_the_threshold_take_sdpa(monkeypatch):
    monkeypatch.setattr(static_attention, "STATIC_MIN_TOKENS", 25)
    q, k, v = _qkv(tokens=24)
    heads, dim = q.shape[2], q.shape[3]
    static = StaticFp8Attention(torch.ones(1, 2, 3, heads), torch.zeros(1, 2, 2, heads, dim),
                                QuantContext(), kernel=fa3.fp8_attention_reference)
    torch.testing.assert_close(static(q, k, v), fa3.sdpa_attention(q, k, v))


def test_values_beyond_the_calibrated_range_are_clamped_not_nan():
    q, k, v = _qkv()
    heads, dim = q.shape[2], q.shape[3]
    tiny_amax = torch.full((1, 2, 3, heads), 0.01)
    static = StaticFp8Attention(tiny_amax, torch.zeros(1, 2, 2, heads, dim), QuantContext(),
                                kernel=fa3.fp8_attention_reference)
    assert torch.isfinite(static(q, k, v)).all()


def test_groups_and_cfg_halves_record_and_pick_their_own_values():
    context = QuantContext(num_groups=3)
    recorder = AttentionRecorder(fa3.sdpa_attention, context)
    context.cfg_active = True
    for group, scale in ((0, 1.0), (2, 8.0)):
        context.set_group(group)
        q, k, v = _qkv(batch=2, seed=group)
        q[1] *= 4  # the cond half's queries are larger
        recorder(q * scale, k, v)
    static = recorder.freeze(num_groups=3, margin=1.0)
    q_amax = static.amax[:, :, 0].amax(-1)  # [group, half]
    assert q_amax[0, COND] > 2 * q_amax[0, UNCOND]
    assert q_amax[2, UNCOND] > 4 * q_amax[0, UNCOND]
    # group 1 was never seen: it takes the nearest recorded group's values (0, the lower)
    torch.testing.assert_close(static.amax[1], static.amax[0])
    torch.testing.assert_close(static.means[1], static.means[0])
    # served: the group tensor selects, and each CFG half of the batch gets its own row
    context.set_group(2, torch.device("cpu"))
    stats = static.stats(4)
    torch.testing.assert_close(stats.q_amax[:2], static.amax[2, UNCOND, 0].expand(2, -1))
    torch.testing.assert_close(stats.q_amax[2:], static.amax[2, COND, 0].expand(2, -1))
    context.cfg_active = False
    torch.testing.assert_close(static.stats(3).k_mean[:, 0], static.means[2, COND, 0].expand(3, -1, -1))


def test_setting_it_like_a_kernel_says_it_is_calibrated():
    with pytest.raises(ValueError, match="calibrated"):
        resolve_attention_backend("fp8-static", "cpu")


def _pixart_run(model, context, groups=(0, 1)):
    g = torch.Generator().manual_seed(4)
    inputs = {
        "hidden_states": torch.randn(2, 4, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 5, TEXT_DIM, generator=g),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    context.cfg_active = True
    outs = []
    with torch.inference_mode():
        for group, t in zip(groups, (800, 200), strict=False):
            context.set_group(group, torch.device("cpu"))
            outs.append(model(**inputs, timestep=torch.tensor([t, t])).sample)
    return torch.cat(outs)


def test_calibrated_tiny_pixart_is_as_close_to_full_precision_as_dynamic_fp8():
    model = tiny_pixart_transformer()
    context = QuantContext(num_groups=2)
    expected = _pixart_run(model, context)
    kernels = calibrate_static_attention(model, lambda: _pixart_run(model, context), context,
                                         kernel=fa3.fp8_attention_reference)
    assert sorted(kernels) == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    processor = model.transformer_blocks[0].attn1.processor
    assert isinstance(processor, KernelAttnProcessor) and processor.kernel is kernels[
        "transformer_blocks.0.attn1"]
    static_db = P.sqnr_db(expected, _pixart_run(model, context))

    from trdq.nn.attention import install_attention_kernel

    install_attention_kernel(model, fa3.fp8_attention_reference, "fp8-oracle")
    dynamic_db = P.sqnr_db(expected, _pixart_run(model, context))
    assert static_db > 25 and static_db > dynamic_db - 3


def test_quantized_latte_with_fused_blocks_takes_the_calibrated_kernels():
    """The served setup: a quantized tiny Latte (fused q/k/v, fused block entries), its
    attention statistics recorded over a pipeline call; the fused blocks' self-attention
    then runs the module's static kernel, and the videos stay close to those of exact
    attention."""
    from tests.helpers.quant import fast, run_video
    from trdq import api
    from trdq.integrations.diffusers import fuse_qkv_projections
    from trdq.nn.fused_block import fuse_block_norms
    from trdq.primitives import psnr_db
    from trdq.runtime.cuda_graphs import quant_context
    from trdq.testing.tiny import TINY_PROMPTS, tiny_latte_pipeline

    pipe = tiny_latte_pipeline()
    fuse_qkv_projections(pipe.transformer)
    api.quantize(pipe, fast("fp8-norot"), progress=False, calibration_prompts=TINY_PROMPTS)
    assert fuse_block_norms(pipe.transformer, gelu=True) > 0
    exact = run_video(pipe, TINY_PROMPTS[:2], steps=3)
    context = quant_context(pipe.transformer)
    calls = []

    def counting_oracle(q, k, v, stats):
        calls.append(q.shape)
        return fa3.fp8_attention_reference(q, k, v, stats=stats)

    kernels = calibrate_static_attention(
        pipe.transformer, lambda: run_video(pipe, TINY_PROMPTS[:2], steps=3), context,
        kernel=counting_oracle)
    assert any(n.startswith("temporal_transformer_blocks") for n in kernels)
    static = run_video(pipe, TINY_PROMPTS[:2], steps=3)
    assert len(calls) == 3 * len(kernels)  # every module, every step (CFG halves batched)
    assert psnr_db(exact, static) > 30.0


def test_calibrate_attention_runs_the_calibration_prompts_through_the_quantized_pipeline():
    from tests.helpers.quant import IMAGE_KW, fast, run_image
    from trdq import api
    from trdq.primitives import psnr_db
    from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline()
    with pytest.raises(ValueError, match="quantized by trdq.quantize"):
        api.calibrate_attention(pipe)
    api.quantize(pipe, fast("w8a8"), progress=False, calibration_prompts=TINY_PROMPTS)
    before = run_image(pipe, TINY_PROMPTS[:2])
    calls = []

    def counting_oracle(q, k, v, stats):
        calls.append(q.shape)
        return fa3.fp8_attention_reference(q, k, v, stats=stats)

    modules = api.calibrate_attention(pipe, TINY_PROMPTS, kernel=counting_oracle,
                                      call_kwargs=IMAGE_KW)
    assert modules == 2 and not calls  # recording runs exact attention
    after = run_image(pipe, TINY_PROMPTS[:2])
    assert len(calls) == 6 * modules  # 6 steps, CFG halves in one batch
    assert psnr_db(before, after) > 30.0


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_modern_families_record_and_serve_static_attention(family):
    """FLUX (joint text+image attention after q/k norms and rotary embeddings, no CFG
    batch) and Wan (CFG as two calls) through diffusers' own processors: every
    self-attention module gets its own calibrated kernel."""
    from tests.integrations.family_helpers import fast_family, latent_run
    from trdq import api
    from trdq.testing.tiny import TINY_PROMPTS
    from trdq.testing.tiny_families import tiny_flux_pipeline, tiny_wan_pipeline

    video = family == "wan"
    pipe = (tiny_wan_pipeline if video else tiny_flux_pipeline)()
    api.quantize(pipe, fast_family(video=video), backend="reference", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    latents, call = latent_run(pipe, video)
    before = latents()
    calls = []

    def counting_oracle(q, k, v, stats):
        calls.append(id(stats))
        return fa3.fp8_attention_reference(q, k, v, stats=stats)

    modules = api.calibrate_attention(pipe, TINY_PROMPTS[:2], kernel=counting_oracle,
                                      call_kwargs=call)
    assert modules == (2 if video else 4)
    after = latents()
    assert len(calls) == 3 * modules * (2 if video else 1)  # Wan: two calls a step
    assert P.sqnr_db(before, after) > 20
