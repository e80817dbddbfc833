"""SD3 / SD3.5 (CFG as one [uncond, cond] batch) through trdq.quantize and trdq.pipeline."""

from __future__ import annotations

import functools

import pytest
import torch

from trdq import api
from trdq.nn import QuantLinear
from trdq.pipeline import GenerationRequest, generate, load_pipeline, pipeline_task
from trdq.testing.tiny import TINY_PROMPTS
from trdq.testing.tiny_families import tiny_sd3_pipeline

from .family_helpers import (
    IMAGE_CALL,
    PROMPTS,
    assert_groups_follow_timesteps,
    capture_denoiser_calls,
    denoiser_sqnrs,
    fast_family,
    spied_runs,
)

GUIDANCE = 4.5
tiny_sd3 = functools.partial(tiny_sd3_pipeline, layers=2)


@pytest.fixture(scope="module")
def sd3():
    fp = tiny_sd3()
    calls = capture_denoiser_calls(fp, steps=4, guidance=GUIDANCE, **IMAGE_CALL)
    quantized = tiny_sd3()
    report = api.quantize(quantized, fast_family(), backend="reference", progress=False,
                          calibration_prompts=TINY_PROMPTS)
    return fp, quantized, report, calls


def test_report_lists_quantized_and_kept_layers(sd3):
    _, pipe, report, _ = sd3
    for name in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
                 "transformer_blocks.0.attn.to_add_out", "transformer_blocks.0.ff_context.net.2",
                 "transformer_blocks.1.ff.net.0.proj", "proj_out"):
        assert name in report.replaced
    for name in ("context_embedder", "time_text_embed.timestep_embedder.linear_1",
                 "time_text_embed.text_embedder.linear_2", "transformer_blocks.0.norm1.linear",
                 "transformer_blocks.1.norm1_context.linear", "norm_out.linear"):
        assert name in report.weight_only
    assert all(isinstance(pipe.transformer.get_submodule(n), QuantLinear) for n in report.replaced)
    # the last block is context_pre_only: no text-stream output projection or FF
    assert "transformer_blocks.1.attn.to_add_out" not in report.replaced + report.weight_only


def test_denoiser_output_close_to_fp_at_each_step(sd3):
    fp, pipe, _, calls = sd3
    assert all(c["hidden_states"].shape[0] == 2 * len(PROMPTS) for c in calls)  # [u, u, c, c]
    assert_groups_follow_timesteps(denoiser_sqnrs(fp, pipe, calls, cfg_batch=True))


def test_groups_switch_and_cfg_batch_is_split(sd3):
    _, pipe, _, _ = sd3
    (trace, unguided), seen = spied_runs(
        pipe, "transformer_blocks.0.attn.to_q", (GUIDANCE, 1.0), **IMAGE_CALL)
    assert len(trace) == 4 and len(set(trace)) > 1
    assert seen[:4] == [(g, True, 4) for g in trace]
    assert seen[4:] == [(g, False, 2) for g in unguided]


def test_halves_use_their_own_calibrated_parameters():
    """Static activation scales: the uncond and cond halves of the batch each get their
    own per-group scale in one launch (CFG-wise parameters)."""
    pipe = tiny_sd3(layers=1)
    api.quantize(pipe, fast_family("w8a8-static", num_groups=2), backend="reference",
                 progress=False, calibration_prompts=TINY_PROMPTS)
    state = api.get_state(pipe)
    differing = [n for n, layer in state.layers.items()
                 if not torch.allclose(layer.act_scale_by_group[:, 0],
                                       layer.act_scale_by_group[:, 1])]
    assert differing, "calibration gave identical uncond/cond scales everywhere"
    layer = state.layers[differing[0]]
    original = layer.backend
    seen = []

    class Spy:
        name = "spy"
        fuses_centering = original.fuses_centering
        fuses_cfg_delta = original.fuses_cfg_delta
        restores_cfg_delta = original.restores_cfg_delta

        def linear(self, x, packed, act, bias, **kw):
            seen.append((state.context.group, act.row_scale.clone()))
            return original.linear(x, packed, act, bias, **kw)

    layer.backend = Spy()
    pipe(PROMPTS, num_inference_steps=3, guidance_scale=GUIDANCE, output_type="latent",
         **IMAGE_CALL)
    assert len(seen) == 3
    for group, rows in seen:
        half = rows.shape[0] // 2
        assert torch.all(rows[:half] == layer.act_scale_by_group[group, 0])
        assert torch.all(rows[half:] == layer.act_scale_by_group[group, 1])


def test_local_folder_round_trip_and_generation(sd3, tmp_path):
    _, pipe, _, _ = sd3
    tiny_sd3().save_pretrained(tmp_path / "sd3")
    loaded = load_pipeline(tmp_path / "sd3")
    assert pipeline_task(loaded) == "image"
    api.save(pipe, tmp_path / "artifact")
    api.load(loaded, tmp_path / "artifact", backend="reference")
    request = GenerationRequest(prompts=PROMPTS, seeds=[3, 4], width=32, height=32,
                                num_inference_steps=2, guidance_scale=GUIDANCE,
                                negative_prompts=["blurry", ""])
    images = generate(loaded, request)
    assert images.shape == (2, 32, 32, 3)
    torch.testing.assert_close(torch.from_numpy(generate(pipe, request)), torch.from_numpy(images))
