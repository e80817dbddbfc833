"""The CPU smoke path of `trdq zoo train`: every stage runs a few steps and the result
loads as real diffusers pipelines through `trdq.pipeline.load_pipeline`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trdq.data import Caption
from trdq.pipeline import GenerationRequest, generate, load_pipeline
from trdq.tools.zoo_train import COMPONENT_FILES, main
from trdq.tools.zoo_training.data import caption_variants
from trdq.tools.zoo_training.loop import Budget, NoiseSchedule
from trdq.zoo import architectures as arch


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    assert main(["--smoke", "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.mark.slow  # the smoke_run fixture trains for ~1 minute
def test_smoke_writes_loadable_pipelines(smoke_run):
    image_pipe = load_pipeline(smoke_run / "tiny-shapes-t2i")
    video_pipe = load_pipeline(smoke_run / "tiny-shapes-t2v")
    assert type(image_pipe).__name__ == "PixArtAlphaPipeline"
    assert type(video_pipe).__name__ == "LattePipeline"
    # Both pipelines share one trained text encoder and VAE, and the VAE got its scale.
    for a, b in zip(image_pipe.text_encoder.parameters(), video_pipe.text_encoder.parameters()):
        assert torch.equal(a, b)
    meta = json.loads((smoke_run / "checkpoints" / "meta.json").read_text())
    assert image_pipe.vae.config.scaling_factor == pytest.approx(meta["scaling_factor"])
    assert meta["t2i"]["steps"] == 2 and meta["t2v"]["steps"] == 2
    assert meta["decoder"]["steps"] == 2
    request = GenerationRequest(
        prompts=["a red circle"],
        seeds=[0],
        width=arch.T2I_RESOLUTION,
        height=arch.T2I_RESOLUTION,
        num_inference_steps=2,
        guidance_scale=4.5,
    )
    image = generate(image_pipe, request)
    assert (
        image.shape == (1, arch.T2I_RESOLUTION, arch.T2I_RESOLUTION, 3) and image.dtype == np.uint8
    )


@pytest.mark.slow  # the smoke_run fixture trains for ~1 minute
def test_smoke_writes_cards_and_fp16_checkpoints(smoke_run):
    for name in ("tiny-shapes-t2i", "tiny-shapes-t2v"):
        card = (smoke_run / name / "README.md").read_text()
        assert "trdq zoo train --smoke" in card and "## Evaluation" in card
    for filename in COMPONENT_FILES.values():
        assert (smoke_run / "checkpoints" / filename).stat().st_size > 0


@pytest.mark.slow  # the smoke_run fixture trains for ~1 minute
def test_from_weights_reassembles_identically(smoke_run, tmp_path):
    assert main(["--from-weights", str(smoke_run / "checkpoints"), "--out", str(tmp_path)]) == 0
    from safetensors.torch import load_file

    relative = "tiny-shapes-t2v/transformer/diffusion_pytorch_model.safetensors"
    first, second = load_file(str(smoke_run / relative)), load_file(str(tmp_path / relative))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_caption_variants_are_grammatical_and_start_full():
    caption = Caption(
        shape="circle",
        color="red",
        size="small",
        direction="left",
        speed="quickly",
        background="white",
    )
    texts = caption_variants(caption, np.random.default_rng(0), 6)
    assert texts[0] == caption.text
    assert all(
        text.split()[-1]
        in ("background", "circle", "left", "right", "up", "down", "quickly", "slowly")
        for text in texts
    )


def test_budget_and_noise_schedule():
    budget = Budget(max_steps=100, max_seconds=1e9, warmup_steps=10)
    assert budget.lr_factor(0) == pytest.approx(0.1)
    assert budget.lr_factor(99) < 0.1 and budget.done(100)
    schedule = NoiseSchedule(torch.device("cpu"))
    x0, noise = torch.ones(2, 4), torch.zeros(2, 4)
    t = torch.tensor([0, 999])
    noisy = schedule.add_noise(x0, noise, t)
    assert noisy[0, 0] > 0.99 and noisy[1, 0] < 0.01
