"""Wan2.1 T2V (CFG as two denoiser calls per step) through trdq.quantize and trdq.pipeline.

WanPipeline runs the cond branch, then the uncond branch, as separate calls of batch B.
No call holds both halves, so CFG-wise parameters do not apply: both branches use the
group's cond column, calibrated on the rows of both calls (trdq.integrations.families).
"""

from __future__ import annotations

import pytest
import torch

from trdq import api
from trdq.nn import QuantLinear
from trdq.pipeline import GenerationRequest, generate, load_pipeline, max_frames, pipeline_task
from trdq.testing.tiny import TINY_PROMPTS
from trdq.testing.tiny_families import tiny_wan_pipeline

from .family_helpers import (
    PROMPTS,
    VIDEO_CALL,
    assert_groups_follow_timesteps,
    capture_denoiser_calls,
    denoiser_sqnrs,
    fast_family,
    spied_runs,
)

GUIDANCE = 5.0


@pytest.fixture(scope="module")
def wan():
    fp = tiny_wan_pipeline()
    calls = capture_denoiser_calls(fp, steps=4, guidance=GUIDANCE, **VIDEO_CALL)
    quantized = tiny_wan_pipeline()
    report = api.quantize(quantized, fast_family(video=True, calib_guidance_scale=GUIDANCE),
                          backend="reference", progress=False, calibration_prompts=TINY_PROMPTS)
    return fp, quantized, report, calls


def test_report_lists_quantized_and_kept_layers(wan):
    _, pipe, report, _ = wan
    for name in ("blocks.0.attn1.to_q", "blocks.0.attn1.to_out.0", "blocks.1.attn2.to_k",
                 "blocks.1.ffn.net.0.proj", "blocks.1.ffn.net.2", "proj_out"):
        assert name in report.replaced
    assert all(isinstance(pipe.transformer.get_submodule(n), QuantLinear) for n in report.replaced)
    assert set(report.weight_only) == {
        "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1",
        "condition_embedder.text_embedder.linear_2",
    }
    # read for its parameters' dtype by WanTransformer3DModel: left exactly as it is
    for name in ("condition_embedder.time_embedder.linear_1",
                 "condition_embedder.time_embedder.linear_2"):
        assert "parameter dtype" in report.skipped[name]
        assert type(pipe.transformer.get_submodule(name)) is torch.nn.Linear


def test_denoiser_output_close_to_fp_for_both_branches(wan):
    fp, pipe, _, calls = wan
    assert len(calls) == 8  # 4 steps x (cond, uncond)
    assert all(c["hidden_states"].shape[0] == len(PROMPTS) for c in calls)
    assert_groups_follow_timesteps(denoiser_sqnrs(fp, pipe, calls, cfg_batch=False))


def test_groups_switch_and_branches_are_separate_calls(wan):
    _, pipe, _, _ = wan
    (trace, unguided), seen = spied_runs(pipe, "blocks.0.attn1.to_q", (GUIDANCE, 1.0),
                                         **VIDEO_CALL)
    assert len(trace) == 8 and trace[0::2] == trace[1::2] and len(set(trace)) > 1
    # guidance > 1 announces no CFG batch: each call holds one branch of B rows
    assert seen[:8] == [(g, False, 2) for g in trace]
    assert len(seen) == 12 and len(unguided) == 4


def test_local_folder_round_trip_and_generation(wan, tmp_path):
    _, pipe, _, _ = wan
    tiny_wan_pipeline().save_pretrained(tmp_path / "wan")
    loaded = load_pipeline(tmp_path / "wan")
    assert pipeline_task(loaded) == "video" and max_frames(loaded) == 81
    api.save(pipe, tmp_path / "artifact")
    api.load(loaded, tmp_path / "artifact", backend="reference")
    request = GenerationRequest(prompts=PROMPTS[:1], seeds=[11], width=32, height=32,
                                num_inference_steps=2, guidance_scale=GUIDANCE, num_frames=5)
    video = generate(loaded, request)
    assert video.shape == (1, 5, 32, 32, 3) and video.dtype.name == "uint8"
    torch.testing.assert_close(torch.from_numpy(generate(pipe, request)), torch.from_numpy(video))


def test_fused_projections_leave_no_idle_layer_and_idle_layers_are_named():
    """The bench's fused Q/K/V on Wan drops the unfused copies (calibration then runs); a
    linear that never runs during calibration is refused by name, not with an empty search."""
    from trdq.integrations.diffusers import fuse_qkv_projections as fuse_qkv

    pipe = tiny_wan_pipeline()
    assert fuse_qkv(pipe.transformer) == 4
    api.quantize(pipe, fast_family(video=True), progress=False)
    idle = tiny_wan_pipeline()
    idle.transformer.fuse_qkv_projections()  # unfused to_q/to_k/to_v stay, unused
    with pytest.raises(ValueError, match="never ran during calibration.*blocks.0.attn1.to_k"):
        api.quantize(idle, fast_family(video=True), progress=False)
