"""The attention backend choice on diffusers denoisers, on the CPU: which modules take a
kernel, that the processor computes the same attention as diffusers' own, and the errors."""

from __future__ import annotations

import pytest
import torch

from trdq import primitives as P
from trdq.kernels import fa3_attention as fa3
from trdq.nn.attention import (
    FP8_MIN_TOKENS,
    KernelAttnProcessor,
    fp8_long_attention,
    install_attention_kernel,
    resolve_attention_backend,
    set_attention_backend,
)
from trdq.testing.tiny import TEXT_DIM, tiny_latte_transformer, tiny_pixart_transformer


def _pixart_inputs(batch=2, size=8, text=5):
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, 4, size, size, generator=g),
        "encoder_hidden_states": torch.randn(batch, text, TEXT_DIM, generator=g),
        "timestep": torch.tensor([500] * batch),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


def _run(model, inputs):
    with torch.inference_mode():
        return model(**inputs).sample


def test_self_attention_takes_the_kernel_and_cross_attention_keeps_sdpa():
    model = tiny_pixart_transformer()
    report = install_attention_kernel(model, fa3.sdpa_attention, "sdpa-kernel")
    assert report.replaced == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert set(report.skipped.values()) == {"cross-attention"}
    for name in report.replaced:
        assert isinstance(model.get_submodule(name).processor, KernelAttnProcessor)


@pytest.mark.parametrize("fused", [False, True])
def test_processor_with_an_exact_kernel_matches_diffusers(fused):
    model = tiny_pixart_transformer()
    if fused:
        model.fuse_qkv_projections()
    inputs = _pixart_inputs()
    expected = _run(model, inputs)
    install_attention_kernel(model, fa3.sdpa_attention, "sdpa-kernel")
    assert torch.allclose(_run(model, inputs), expected, atol=1e-5)


def test_latte_spatial_and_temporal_attention_take_the_kernel():
    model = tiny_latte_transformer(video_length=4)
    g = torch.Generator().manual_seed(2)
    inputs = {
        "hidden_states": torch.randn(2, 4, 4, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 5, TEXT_DIM, generator=g),
        "timestep": torch.tensor([500, 500]),
        "enable_temporal_attentions": True,
    }
    expected = _run(model, inputs)
    report = install_attention_kernel(model, fa3.fp8_attention_reference, "fp8-oracle")
    assert any(n.startswith("temporal_transformer_blocks") for n in report.replaced)
    assert any(n.startswith("transformer_blocks") for n in report.replaced)
    # the e4m3 oracle behind every self-attention: close to, not equal to, bf16-free SDPA
    assert 20 < P.sqnr_db(expected, _run(model, inputs)) < 80


def test_sdpa_restores_the_original_processors():
    model = tiny_pixart_transformer()
    before = type(model.transformer_blocks[0].attn1.processor)
    install_attention_kernel(model, fa3.fp8_attention_reference, "fp8-oracle")
    report = set_attention_backend(model, "sdpa")
    assert len(report.replaced) == 2
    assert type(model.transformer_blocks[0].attn1.processor) is before


def test_auto_is_sdpa_without_fa3_and_explicit_fa3_backends_say_what_is_missing():
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("sdpa", "cpu") == "sdpa"
    for name in ("fp8", "fa3"):
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            resolve_attention_backend(name, "cpu")
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_attention_backend("fp4", "cpu")


def test_fp8_long_takes_fp8_from_the_token_threshold_and_sdpa_below(monkeypatch):
    calls = []

    def fake_fp8(q, k, v):
        calls.append(q.shape[1])
        return fa3.sdpa_attention(q, k, v)

    monkeypatch.setattr(fa3, "fa3_fp8_attention", fake_fp8)
    g = torch.Generator().manual_seed(3)
    for tokens in (FP8_MIN_TOKENS - 1, FP8_MIN_TOKENS):
        q, k, v = (torch.randn(1, tokens, 1, 8, generator=g) for _ in range(3))
        torch.testing.assert_close(fp8_long_attention(q, k, v), fa3.sdpa_attention(q, k, v))
    assert calls == [FP8_MIN_TOKENS]


def _family_latents(pipe, video: bool):
    call = {"height": 32, "width": 32, "max_sequence_length": 16}
    if video:
        call["num_frames"] = 5
    with torch.inference_mode():
        return pipe(["a red circle top left"], num_inference_steps=2, guidance_scale=3.0,
                    output_type="latent", generator=torch.Generator().manual_seed(5), **call)[0]


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_family_self_attention_runs_the_kernel_inside_diffusers_processor(family):
    """FLUX's joint and single-stream attention and Wan's self-attention take the kernel
    through diffusers' own processor code; Wan's cross-attention stays with diffusers."""
    from trdq.testing.tiny_families import tiny_flux_pipeline, tiny_wan_pipeline

    pipe = (tiny_flux_pipeline if family == "flux" else tiny_wan_pipeline)()
    video = family == "wan"
    expected = _family_latents(pipe, video)
    calls = []

    def counting_sdpa(q, k, v):
        calls.append(q.shape)
        return fa3.sdpa_attention(q, k, v)

    report = install_attention_kernel(pipe.transformer, counting_sdpa, "counting")
    if family == "flux":
        assert len(report.replaced) == 4 and not report.skipped
    else:
        assert report.replaced == ["blocks.0.attn1", "blocks.1.attn1"]
        assert set(report.skipped.values()) == {"cross-attention"}
    got = _family_latents(pipe, video)
    # two steps, CFG on Wan as two calls: every replaced module ran the kernel each call
    denoiser_calls = 2 * (2 if video else 1)
    assert len(calls) == denoiser_calls * len(report.replaced)
    assert torch.allclose(got, expected, atol=1e-4)

    install_attention_kernel(pipe.transformer, fa3.fp8_attention_reference, "fp8-oracle")
    assert 15 < P.sqnr_db(expected, _family_latents(pipe, video)) < 80
    set_attention_backend(pipe.transformer, "sdpa")
    assert torch.equal(_family_latents(pipe, video), expected)
    assert all(type(m.processor).__name__ in ("FluxAttnProcessor", "WanAttnProcessor")
               for m in pipe.transformer.modules() if hasattr(m, "processor"))


def test_sd3_joint_attention_keeps_its_processor():
    from trdq.testing.tiny_families import tiny_sd3_pipeline

    report = install_attention_kernel(tiny_sd3_pipeline().transformer, fa3.sdpa_attention, "x")
    assert not report.replaced
    assert set(report.skipped.values()) == {"processor JointAttnProcessor2_0"}
