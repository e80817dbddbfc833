"""Acceptance on the zoo pipelines (slow: real trained tiny models at 128 px / 16 frames)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from trdq import api
from trdq.primitives import psnr_db

ZOO = Path(__file__).resolve().parents[2] / "trdq" / "zoo" / "models"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("trdq.pipeline") is None
                       or not (ZOO / "tiny-shapes-t2i").is_dir(), reason="zoo not built"),
]
PROMPTS = ["a large red circle at the top left on a white background",
           "a small blue square at the bottom right on a black background"]


def _generate(pipe, steps: int = 20):
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    return pipe(PROMPTS, generator=gens, num_inference_steps=steps, guidance_scale=4.5,
                use_resolution_binning=False, clean_caption=False, output_type="pt").images


def test_zoo_t2i_full_w8a8_beats_minmax(tmp_path):
    from trdq.pipeline import load_pipeline

    reference = _generate(load_pipeline("tiny-shapes-t2i"))
    scores = {}
    for preset in ("w8a8-minmax", "w8a8"):
        pipe = load_pipeline("tiny-shapes-t2i")
        report = api.quantize(pipe, preset, cache_dir=tmp_path, progress=False)
        assert report.backend == "cpu_int8"
        scores[preset] = psnr_db(reference, _generate(pipe))
    print("zoo t2i PSNR vs FP:", scores)
    assert scores["w8a8"] > scores["w8a8-minmax"], scores


def test_zoo_t2v_quantizes_and_runs(tmp_path):
    from trdq.pipeline import load_pipeline

    pipe = load_pipeline("tiny-shapes-t2v")
    report = api.quantize(pipe, "w8a8", cache_dir=tmp_path, progress=False)
    assert report.replaced and report.cache == ["miss"]
    out = pipe(PROMPTS[:1], num_inference_steps=10, guidance_scale=4.5, video_length=8,
               clean_caption=False, output_type="pt",
               generator=torch.Generator().manual_seed(0)).frames
    assert torch.isfinite(out).all()
