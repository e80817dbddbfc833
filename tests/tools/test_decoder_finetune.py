"""Decoder-only VAE fine-tuning keeps the latent space (the DiTs depend on it) and weighs
the shape's pixels more than the background's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trdq.data import render_image, render_video
from trdq.tools.zoo_training.data import to_unit_range
from trdq.tools.zoo_training.vae import DecoderConfig, finetune_decoder, foreground_weights
from trdq.zoo import architectures as arch
from trdq.zoo.build import build_components


def test_foreground_weights_mark_the_shape_and_its_edge():
    frame = render_image("a small red square at the center on a white background", 64)
    x = to_unit_range(torch.from_numpy(frame[None]))
    weights = foreground_weights(x, extra=9.0)[0, 0]
    shape_pixels = (np.abs(frame.astype(int) - frame[0, 0]).max(-1) > 6)
    assert weights[torch.from_numpy(shape_pixels)].min() == 10.0
    assert weights[0, 0] == 1.0 and weights[-1, -1] == 1.0
    # the ring is one pixel wide: the weighted area is a little larger than the shape
    assert shape_pixels.sum() < (weights > 1).sum() < shape_pixels.sum() + 4 * 64


@pytest.mark.slow  # ~25 s of decoder training
def test_finetune_changes_the_decoder_only():
    torch.manual_seed(0)
    vae = build_components(seed=0)["vae"]
    encoder = {k: v.clone() for k, v in vae.state_dict().items() if not _decoding(k)}
    decoder = {k: v.clone() for k, v in vae.state_dict().items() if _decoding(k)}
    images = np.stack([render_image("a red circle", arch.T2I_RESOLUTION)] * 2)
    videos = np.stack([render_video("a blue square moving left", 2, arch.T2V_RESOLUTION)] * 2)
    config = DecoderConfig(steps=2, seconds=60, image_batch=1, frame_batch=1, eval_batch=1)
    summary = finetune_decoder(vae, images, videos, config, torch.device("cpu"), seed=0)
    state = vae.state_dict()
    assert summary["steps"] == 2
    assert all(torch.equal(state[k], v) for k, v in encoder.items())
    assert any(not torch.equal(state[k], v) for k, v in decoder.items())
    assert not any(p.requires_grad for p in vae.parameters())


def _decoding(key: str) -> bool:
    return key.startswith(("decoder.", "post_quant_conv."))
