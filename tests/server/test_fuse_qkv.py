"""TRDQ_FUSE_QKV: diffusers' fused q/k/v projections in the served denoisers (what every
`trdq bench` row measures); auto fuses on CUDA only."""

from __future__ import annotations

import pytest
import torch

from server.engine.models import load_models
from server.metrics import Metrics
from server.settings import Settings
from tests.helpers.serving import make_settings_with_video


@pytest.mark.parametrize("name", ["fuse_qkv", "fused_block"])  # TRDQ_FUSED_BLOCK too
def test_setting_parses_auto_and_flags(name):
    assert getattr(Settings(), name) == "auto"
    assert getattr(Settings(**{name: " ON "}), name) is True
    assert getattr(Settings(**{name: "0"}), name) is False
    with pytest.raises(ValueError, match="auto, true"):
        Settings(**{name: "sometimes"})


@pytest.mark.parametrize("setting,expect_fused", [("auto", False), ("1", True)])
def test_fp_variant_is_fused_when_asked_and_serves_the_same_images(tmp_path, setting, expect_fused):
    """On CPU auto leaves the projections as they are; 1 fuses them (the fp precision
    needs no calibration), and the fused denoiser computes what the unfused one did."""
    settings = make_settings_with_video(tmp_path, quant="fp", video_model="none", warmup=False,
                                        fuse_qkv=setting)
    model = load_models(settings, Metrics(), torch.device("cpu")).all()[0]
    transformer = model.pipe.transformer
    fused = [m for m in transformer.modules() if getattr(m, "fused_projections", False)]
    assert bool(fused) is expect_fused
    assert (model.info["fused_qkv_modules"] > 0) is expect_fused
    if expect_fused:
        attn = fused[0]
        assert attn.to_q is None and attn.to_qkv is not None
        reference = make_settings_with_video(tmp_path / "ref", quant="fp", video_model="none",
                                             warmup=False, fuse_qkv="0")
        plain = load_models(reference, Metrics(), torch.device("cpu")).all()[0]
        kwargs = {"num_inference_steps": 2, "output_type": "pt", "guidance_scale": 4.5,
                  "height": model.default_height, "width": model.default_width,
                  "use_resolution_binning": False, "clean_caption": False}
        images = [m.pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
                  for m in (model, plain)]
        torch.testing.assert_close(images[0], images[1], rtol=0, atol=1e-4)
