"""Real-size FLUX.1-dev and Wan2.1-1.3B bench presets on a GPU: the preset's denoiser step
runs in bf16, and W8A8 (a small calibration through the real pipeline) stays close to it.

The SQNR bound is loose (the tiny models reach ~40 dB): random real-size weights are a
shape and plumbing check, not a quality one. Each case takes 6-8 minutes on an H100, most
of it the calibration search, which runs on the host."""

from __future__ import annotations

import pytest
import torch

from trdq import api
from trdq.config import QuantConfig
from trdq.primitives import sqnr_db
from trdq.tools.bench_presets import get_preset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["wan21-1.3b-480p", "flux-dev-1024"])
def test_real_size_step_and_w8a8(name):
    torch.manual_seed(0)
    preset = get_preset(name)
    pipe = preset.build(torch.device("cuda"), torch.bfloat16)
    inputs = preset.step_inputs(pipe.transformer, 1, "cuda", torch.bfloat16)
    with torch.inference_mode():
        ref = pipe.transformer(**inputs)[0].float()
    assert ref.shape == inputs["hidden_states"].shape and torch.isfinite(ref).all()
    config = QuantConfig.preset("w8a8").replace(
        calib_num_prompts=2, calib_batch_size=2, calib_steps=4,
        calib_guidance_scale=preset.spec.pipeline_guidance,
        calib_height=preset.calib_hw[0], calib_width=preset.calib_hw[1],
        calib_num_frames=17 if preset.frames else None)
    report = api.quantize(pipe, config, progress=False)
    assert report.replaced and report.weight_bytes_after < 0.6 * report.weight_bytes_before
    api.get_state(pipe).context.cfg_override = preset.guidance_scale > 1
    with torch.inference_mode():
        out = pipe.transformer(**inputs)[0].float()
    assert sqnr_db(ref, out) > 20
