import numpy as np
import pytest
import torch

from trdq.data import Caption, is_heldout, parse_caption, render_image
from trdq.data.dataset import ShapesDataset, drop_caption, to_tensor, to_uint8


def test_image_items_are_deterministic_tensors():
    dataset = ShapesDataset("image", size=32, length=50, seed=3)
    text, pixels = dataset[7]
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    again_text, again = ShapesDataset("image", size=32, length=50, seed=3)[7]
    assert text == again_text and torch.equal(pixels, again)
    assert not torch.equal(pixels, ShapesDataset("image", size=32, length=50, seed=4)[7][1])
    with pytest.raises(IndexError):
        dataset[50]


def test_video_items():
    dataset = ShapesDataset("video", size=24, num_frames=5, length=4)
    text, pixels = dataset[1]
    assert pixels.shape == (5, 3, 24, 24)
    assert text == "" or "moving" in text


def test_only_training_combinations_and_valid_texts():
    dataset = ShapesDataset("image", size=16, length=400, uncond_prob=0.2, partial_prob=0.3)
    texts = []
    for index in range(len(dataset)):
        assert not is_heldout(dataset.caption(index))
        texts.append(dataset[index][0])
    empty = sum(t == "" for t in texts) / len(texts)
    assert 0.1 < empty < 0.3
    for text in texts:
        if text:
            parse_caption(text)  # every non-empty text is a grammar caption


def test_drop_caption_keeps_shape_and_motion():
    caption = parse_caption("a small red cross moving left quickly on a white background")
    rng = np.random.default_rng(0)
    for _ in range(100):
        text = drop_caption(caption, rng, uncond_prob=0.0, partial_prob=1.0)
        partial = parse_caption(text)
        assert partial.shape == "cross" and partial.direction == "left"
        assert partial != caption
    assert drop_caption(caption, rng, uncond_prob=0.0, partial_prob=0.0) == caption.text
    assert drop_caption(caption, rng, uncond_prob=1.0, partial_prob=0.0) == ""
    assert drop_caption(Caption(shape="circle"), rng, partial_prob=1.0, uncond_prob=0.0) == (
        "a circle"
    )
    with pytest.raises(ValueError):
        drop_caption(caption, rng, uncond_prob=0.7, partial_prob=0.7)


def test_tensor_round_trip():
    image = render_image("a blue square", 20)
    np.testing.assert_array_equal(to_uint8(to_tensor(image)), image)
