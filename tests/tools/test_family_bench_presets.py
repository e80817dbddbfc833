"""Bench presets of FLUX.1-dev, SD3.5-large and Wan2.1: published sizes on the meta device,
and denoiser-step inputs that the (scaled-down) transformers accept."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trdq.tools.bench_family_presets import TRANSFORMER_CONFIGS, scaled_down
from trdq.tools.bench_presets import PRESET_NAMES, get_preset

NEW = ("flux-dev-1024", "sd35-large-1024", "wan21-1.3b-480p", "wan21-14b-480p")
#: published parameter counts of the denoisers, in billions (within 3%)
PARAMS_B = {"flux-dev": 11.9, "sd35-large": 8.1, "wan21-1.3b": 1.42, "wan21-14b": 14.3}


def _transformer_cls(family: str):
    import diffusers

    return {"flux": diffusers.FluxTransformer2DModel, "sd3": diffusers.SD3Transformer2DModel,
            "wan": diffusers.WanTransformer3DModel}[family]


@pytest.mark.parametrize("name", NEW)
def test_published_architecture_builds_on_meta(name):
    assert name in PRESET_NAMES
    spec = get_preset(name).spec
    with torch.device("meta"):
        model = _transformer_cls(spec.family)(**TRANSFORMER_CONFIGS[spec.transformer])
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    assert billions == pytest.approx(PARAMS_B[spec.transformer], rel=0.03)
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    assert head_dim == (64 if spec.family == "sd3" else 128)
    assert (heads, len(getattr(model, "transformer_blocks", getattr(model, "blocks", [])))) == {
        "flux-dev": (24, 19), "sd35-large": (38, 38), "wan21-1.3b": (12, 30),
        "wan21-14b": (40, 40)}[spec.transformer]


@pytest.mark.parametrize("name", NEW)
def test_step_inputs_fit_the_transformer(name):
    preset = get_preset(name)
    spec = preset.spec
    full = preset.step_inputs(
        type("T", (), {"config": type("C", (), TRANSFORMER_CONFIGS[spec.transformer])})(),
        1, "meta", torch.bfloat16)
    lat = full["hidden_states"].shape
    expected = {"flux": (1, 4096, 64), "sd3": (2, 16, 128, 128), "wan": (1, 16, 21, 60, 104)}
    assert tuple(lat) == expected[spec.family]
    assert full["encoder_hidden_states"].shape[1] == {"flux": 512, "sd3": 333, "wan": 512}[
        spec.family]
    # the same call layout, at test size, through a real (scaled-down) transformer
    small = dataclasses.replace(preset, height=64, width=64, text_len=8,
                                frames=5 if preset.frames else None)
    torch.manual_seed(0)
    model = _transformer_cls(spec.family)(**scaled_down(TRANSFORMER_CONFIGS[spec.transformer]))
    inputs = small.step_inputs(model.eval(), 2, "cpu", torch.float32)
    with torch.no_grad():
        out = model(**inputs)[0]
    rows = 4 if spec.family == "sd3" else 2  # SD3: [uncond x 2, cond x 2]
    assert out.shape[0] == rows and out.shape == inputs["hidden_states"].shape
    assert torch.isfinite(out).all()
    kwargs = preset.call_kwargs(1)
    assert kwargs["guidance_scale"] == spec.pipeline_guidance
    assert kwargs["max_sequence_length"] == {"flux": 512, "sd3": 256, "wan": 512}[spec.family]
    # a denoiser step is a CFG batch only for SD3 (what trdq.tools.bench sets cfg_override from)
    assert (preset.guidance_scale > 1) == (spec.family == "sd3")


@pytest.mark.parametrize("name", NEW)
def test_whole_pipeline_builds_on_meta(name):
    """Text encoders (CLIP-L, CLIP-G, T5-XXL, UMT5-XXL) and VAEs at their published sizes."""
    pipe = get_preset(name).build(torch.device("meta"), torch.bfloat16)
    billions = {k: sum(p.numel() for p in v.parameters()) / 1e9
                for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    expected = {
        "flux-dev-1024": {"text_encoder": 0.123, "text_encoder_2": 4.76, "vae": 0.084},
        "sd35-large-1024": {"text_encoder": 0.124, "text_encoder_2": 0.695,
                            "text_encoder_3": 4.76, "vae": 0.084},
        "wan21-1.3b-480p": {"text_encoder": 5.68, "vae": 0.127},
        "wan21-14b-480p": {"text_encoder": 5.68, "vae": 0.127},
    }[name]
    for component, size in expected.items():
        assert billions[component] == pytest.approx(size, rel=0.02), component
