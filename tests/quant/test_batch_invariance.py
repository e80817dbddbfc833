"""A quantized denoiser computes each request's rows the same whether it runs alone or in a
batch with other requests (the server's dynamic batching relies on this).

Per-token activation scales and the CFG-wise row layout must not mix requests. One denoiser
call on the [uncond, cond] rows of request 0 alone and of requests 0-2 together (other
prompts, another negative prompt, other latents) is compared.

In full precision the two agree to ~2e-7 relative (batch-size-dependent GEMM / attention
rounding). A quantized model turns such rounding into a few int8 rounding flips: measured
1e-3..5e-3 relative after one call (zoo runs 8/9, at t = 999 / 500 / 20; w8a8, w8a8-minmax
and w4a8 alike, so not a CFG-layout effect: the first layer that differs is a QuantLinear
whose input differs by 3.5e-7). Twenty sampler steps amplify that to several pixel levels,
which is why tests/serving/test_batching.py checks quantized batching for function only and
the bound lives here: 2e-2, 4x the largest measured. It catches rows that mix wholesale
(another request's scales or conditioning); a subtle mix below 2% would pass (the exact
CFG-wise row layout is checked in tests/quant/test_cfg.py).
"""

from __future__ import annotations

import pytest
import torch

from trdq.api import quantize
from trdq.config import QuantConfig
from trdq.data.split import heldout_prompts
from trdq.pipeline import load_pipeline

MODEL = "tiny-shapes-t2i"


def _denoise(pipe, latents, negative, positive, neg_mask, pos_mask, t: int):
    x = torch.cat([latents, latents])
    return pipe.transformer(
        x,
        encoder_hidden_states=torch.cat([negative, positive]),
        encoder_attention_mask=torch.cat([neg_mask, pos_mask]),
        timestep=torch.full((x.shape[0],), t),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )[0]


# ~5 minutes each for the two w8a8 presets on 2 cores: w4a8 (~25 s) keeps the check in the
# default tier
@pytest.mark.parametrize("preset", [pytest.param("w8a8", marks=pytest.mark.slow),
                                    pytest.param("w8a8-minmax", marks=pytest.mark.slow), "w4a8"])
def test_quantized_rows_do_not_depend_on_the_batch(preset):
    pipe = load_pipeline(MODEL)
    config = QuantConfig.preset(preset).replace(calib_num_prompts=2, calib_steps=4)
    quantize(pipe, config, cache_dir=None, backend="cpu_int8", progress=False)
    prompts = heldout_prompts(3, seed=0, kind="image")
    with torch.inference_mode():
        pos, pos_mask, _, _ = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, clean_caption=False
        )
        neg, neg_mask, _, _ = pipe.encode_prompt(
            ["", "", "blurry"], do_classifier_free_guidance=False, clean_caption=False
        )
        size = int(pipe.transformer.config.sample_size)
        latents = torch.randn(3, 4, size, size, generator=torch.Generator().manual_seed(1))
        latents = latents.to(pipe.transformer.dtype)
        for t in (999, 500, 20):
            alone = _denoise(pipe, latents[:1], neg[:1], pos[:1], neg_mask[:1], pos_mask[:1], t)
            batch = _denoise(pipe, latents, neg, pos, neg_mask, pos_mask, t)
            # rows: [uncond 0, uncond 1, uncond 2, cond 0, cond 1, cond 2]
            together = torch.cat([batch[0:1], batch[3:4]])
            relative = (together - alone).norm() / alone.norm()
            assert relative < 2e-2, (preset, t, float(relative))
