import json

import numpy as np
import pytest

from trdq.data import heldout_prompts, parse_caption, render_image, render_video, split_prompts
from trdq.eval.perturb import degrade
from trdq.eval.report import PSNR_CAP_DB, quality_markdown, run_quality, similarity_to


def _renderer(noise_std: float = 0.0):
    def generate(prompts, seeds):
        out = []
        for prompt, seed in zip(prompts, seeds):
            rng = np.random.default_rng(seed)
            out.append(degrade(render_image(prompt, 64, rng=rng), rng, noise_std=noise_std))
        return out

    return generate


def _blank(prompts, seeds):
    return [np.zeros((64, 64, 3), dtype=np.uint8) for _ in prompts]


def test_run_quality_layout_and_values():
    prompts = heldout_prompts(12, seed=0)
    report = run_quality(
        "tiny-shapes-t2i",
        {"w8a8": _renderer(6.0), "fp": _renderer(), "broken": _blank},
        prompts,
    )
    payload = json.loads(report.to_json())
    assert set(payload) == {"model", "prompts", "results"}
    assert payload["model"] == "tiny-shapes-t2i" and payload["prompts"] == 12
    assert [r["quant"] for r in payload["results"]] == ["fp", "w8a8", "broken"]
    for row in payload["results"]:
        assert set(row) == {
            "quant",
            "accuracy",
            "per_attribute",
            "psnr_to_fp",
            "ssim_to_fp",
            "seconds",
            "accuracy_by_kind",
        }
        assert set(row["accuracy_by_kind"]) == {"full"}  # full combinations only
    fp, w8a8, broken = report.results
    assert fp.accuracy == 1.0 and fp.psnr_to_fp is None and fp.ssim_to_fp is None
    assert set(fp.per_attribute) == {"color", "shape", "size", "position", "background"}
    assert w8a8.accuracy >= 0.9 and 25 < w8a8.psnr_to_fp < 40 and 0 < w8a8.ssim_to_fp < 1
    assert broken.accuracy == 0.0 and broken.psnr_to_fp < w8a8.psnr_to_fp
    assert report.result("w8a8") is w8a8
    markdown = quality_markdown([report], "trdq eval --model tiny-shapes-t2i", date="2026-11-26")
    assert "2026-11-26" in markdown and "trdq eval --model tiny-shapes-t2i" in markdown
    assert "| w8a8 |" in markdown and "n/a" in markdown


def test_accuracy_by_caption_kind():
    """A partial caption is scored on what it names; each kind gets its own accuracy."""
    prompts = split_prompts("heldout", 12, seed=0, kind="image", partial=1 / 3)

    def partial_blank(prompts, seeds):  # right on full captions, blank on partial ones
        right = _renderer()(prompts, seeds)
        return [r if parse_caption(p).is_complete else np.zeros_like(r)
                for p, r in zip(prompts, right)]

    report = run_quality("m", {"fp": _renderer(), "half": partial_blank}, prompts)
    assert report.result("fp").accuracy_by_kind == {"full": 1.0, "partial": 1.0}
    half = report.result("half")
    assert half.accuracy_by_kind == {"full": 1.0, "partial": 0.0}
    assert half.accuracy == pytest.approx(8 / 12)
    markdown = quality_markdown([report], "cmd", date="2026-12-06")
    assert "| full captions | partial captions |" in markdown


def test_scoring_in_worker_processes_matches_one_process():
    prompts = heldout_prompts(16, seed=2)
    settings = {"fp": _renderer(), "noisy": _renderer(12.0)}
    serial = run_quality("m", settings, prompts)
    parallel = run_quality("m", settings, prompts, workers=2)
    for a, b in zip(serial.results, parallel.results):
        assert (a.accuracy, a.per_attribute, a.psnr_to_fp, a.ssim_to_fp) == (
            b.accuracy, b.per_attribute, b.psnr_to_fp, b.ssim_to_fp)


def test_identical_samples_keep_json_finite():
    prompts = heldout_prompts(3, seed=1)
    report = run_quality("m", {"fp": _renderer(), "same": _renderer()}, prompts, seeds=[5, 6, 7])
    assert report.result("same").psnr_to_fp == PSNR_CAP_DB
    assert report.result("same").ssim_to_fp == pytest.approx(1.0)
    json.loads(report.to_json())


def test_video_settings():
    prompts = heldout_prompts(3, seed=0, kind="video")

    def generate(prompts, seeds):
        return [
            render_video(p, 8, 48, rng=np.random.default_rng(s)) for p, s in zip(prompts, seeds)
        ]

    report = run_quality("tiny-shapes-t2v", {"fp": generate}, prompts)
    assert report.results[0].accuracy == 1.0
    assert "direction" in report.results[0].per_attribute


def test_bad_arguments():
    with pytest.raises(ValueError):
        run_quality("m", {"fp": _blank}, ["a red circle"], seeds=[1, 2])
    with pytest.raises(ValueError):
        run_quality("m", {"fp": lambda p, s: []}, ["a red circle"])
    with pytest.raises(ValueError):
        similarity_to([], [])


def test_markdown_states_the_sampling_error_of_an_accuracy():
    """64 prompts at 0.875 (the video model's FP on one sample) move ~4 points by the
    sample alone; a perfect score bounds the failure rate instead."""
    from trdq.eval.report import sampling_error_note

    assert "standard error of 4.1 points" in sampling_error_note(0.875, 64)
    assert "below 4.7% (95%)" in sampling_error_note(1.0, 64)
    assert "success rate below" in sampling_error_note(0.0, 64)
    report = run_quality("m", {"fp": _renderer()}, heldout_prompts(4, seed=0))
    assert "Sampling error: 4 prompts without a failure" in quality_markdown([report], "cmd")
